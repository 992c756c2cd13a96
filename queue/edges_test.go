package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/queue"
)

// TestResultIdentityIsIDAndJobSeq pins "an id is never answered with
// another job's result": a result's identity is its job id plus the job's
// stream sequence. A rerun of the same job message is deduplicated; a new
// job that reuses the id (after the jobs dedup window) stores its own
// result, and a client waiting with its submission's sequence gets its own.
func TestResultIdentityIsIDAndJobSeq(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)

	store := func(seq uint64, v string) {
		t.Helper()
		if err := b.topo.StoreResult(ctx, &queue.Result{ID: "reused", JobSeq: seq, OK: true, Result: json.RawMessage(v)}); err != nil {
			t.Fatal(err)
		}
	}
	store(10, `"first job"`)
	store(10, `"first job, rerun"`) // same job message: dropped
	store(20, `"second job"`)       // a new job reusing the id: kept
	store(5, `"an earlier job"`)    // finished last: results are filed in store order

	info, err := b.topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Fatalf("%d results stored, want 3 (one per job message)", info.State.Msgs)
	}
	for _, tt := range []struct {
		seq  uint64
		want string
	}{{10, `"first job"`}, {20, `"second job"`}, {5, `"an earlier job"`}, {0, `"an earlier job"`}} {
		r, err := b.topo.GetJobResult(ctx, "reused", tt.seq)
		if err != nil {
			t.Fatalf("GetJobResult(seq %d): %v", tt.seq, err)
		}
		if string(r.Result) != tt.want || (tt.seq != 0 && r.JobSeq != tt.seq) {
			t.Errorf("GetJobResult(seq %d) = %s (job_seq %d), want %s", tt.seq, r.Result, r.JobSeq, tt.want)
		}
	}
	// A job whose result is not stored yet is not answered with an older
	// job's, nor a newer one's.
	for _, seq := range []uint64{15, 30} {
		if r, err := b.topo.GetJobResult(ctx, "reused", seq); !errors.Is(err, queue.ErrResultNotFound) {
			t.Errorf("GetJobResult(seq %d) = %+v, %v; want ErrResultNotFound", seq, r, err)
		}
	}
	// WaitJobResult skips the newer job's result and returns this one's.
	r, err := b.topo.WaitJobResult(ctx, b.nc, "reused", 10)
	if err != nil || string(r.Result) != `"first job"` {
		t.Fatalf("WaitJobResult(seq 10) = %+v, %v", r, err)
	}
	// job_seq is on the wire for clients that read results themselves.
	m, err := b.topo.Results.GetLastMsgForSubject(ctx, "fleet.result.reused")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"job_seq":5`) {
		t.Errorf("stored result %s has no job_seq", m.Data)
	}
}

// TestOutcomesThatDoNotFit: a result or dead letter over the server's max
// payload is refused before it is published, with an error naming the size
// and the limit, and the smaller stand-in (a too_large result; a letter
// without the body, then without headers) is stored. A letter without its
// body refuses replay clearly.
func TestOutcomesThatDoNotFit(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)
	limit := int(b.nc.MaxPayload())
	if limit != b.topo.MaxPayload() || limit <= 0 {
		t.Fatalf("MaxPayload = %d, connection says %d", b.topo.MaxPayload(), limit)
	}
	huge := json.RawMessage(`"` + strings.Repeat("x", limit-60) + `"`)

	res := &queue.Result{ID: "big", JobSeq: 7, OK: true, Result: huge, Attempt: 1}
	err := b.topo.StoreResult(ctx, res)
	var tl *queue.TooLargeError
	if !errors.As(err, &tl) || !errors.Is(err, queue.ErrTooLarge) || tl.Limit != limit || tl.Size <= limit {
		t.Fatalf("StoreResult of an oversize result: %v, want a *TooLargeError with limit %d", err, limit)
	}
	if _, err := b.topo.StoreResultAsync(res); !errors.Is(err, queue.ErrTooLarge) {
		t.Fatalf("StoreResultAsync of an oversize result: %v, want ErrTooLarge", err)
	}
	if err := b.topo.StoreResult(ctx, queue.TooLargeResult(res, err)); err != nil {
		t.Fatal(err)
	}
	got, err := b.topo.GetJobResult(ctx, "big", 7)
	if err != nil {
		t.Fatal(err)
	}
	if got.OK || got.Error == nil || got.Error.Kind != queue.KindTooLarge || got.Attempt != 1 ||
		!strings.Contains(got.Error.Message, fmt.Sprint(limit)) || !strings.Contains(got.Error.Message, fmt.Sprint(tl.Size)) {
		t.Fatalf("stand-in result %+v (error %+v), want too_large naming %d and %d", got, got.Error, tl.Size, limit)
	}

	// A results stream with a smaller max message size: known at Open, it
	// is checked before publishing; lowered later, the stream's refusal
	// is mapped to the same error.
	info, err := b.topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc := info.Config
	rc.MaxMsgSize = 4096
	if _, err := b.js.UpdateStream(ctx, rc); err != nil {
		t.Fatal(err)
	}
	mid := &queue.Result{ID: "mid", JobSeq: 8, OK: true, Result: json.RawMessage(`"` + strings.Repeat("m", 5000) + `"`)}
	err = b.topo.StoreResult(ctx, mid)
	if !errors.As(err, &tl) || tl.Limit != 0 || !strings.Contains(err.Error(), "max message size") {
		t.Errorf("StoreResult refused by the stream: %v, want a *TooLargeError", err)
	}
	reopened, err := queue.Open(ctx, b.js, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = reopened.StoreResult(ctx, mid)
	if !errors.As(err, &tl) || tl.Limit != 4096 || !strings.Contains(err.Error(), "FLEET_RESULTS's max message size of 4096 bytes") {
		t.Errorf("StoreResult over a known stream limit: %v, want a *TooLargeError naming 4096", err)
	}
	rc.MaxMsgSize = -1
	if _, err := b.js.UpdateStream(ctx, rc); err != nil {
		t.Fatal(err)
	}

	// A dead letter of a body that fits the jobs stream but not a letter.
	body := []byte(`{"id":"bigdl","command":"crash","payload":` + string(huge) + `}`)
	hdr := nats.Header{"Nats-Msg-Id": []string{"bigdl"}, "Trace-Id": []string{"t-9"}}
	if err := b.topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: "bigdl", Subject: "fleet.job.any", Job: body,
		Headers: hdr, Kind: queue.KindExhausted, Error: "crashed", Attempts: 2, StreamSeq: 41}); err != nil {
		t.Fatal(err)
	}
	// Headers that alone are too large go too.
	fatHdr := nats.Header{"Fat": []string{strings.Repeat("h", limit)}}
	if err := b.topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: "fathdr", Subject: "fleet.job.any", Job: []byte(`{}`),
		Headers: fatHdr, Kind: queue.KindBadRequest, Error: strings.Repeat("e", 1<<20), StreamSeq: 42}); err != nil {
		t.Fatal(err)
	}
	list, err := b.topo.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d dead letters, want 2", len(list))
	}
	d := list[0]
	if d.JobID != "bigdl" || d.StreamSeq != 41 || len(d.Job) != 0 || d.JobSize != len(body) ||
		d.Headers["Trace-Id"][0] != "t-9" || !strings.Contains(d.Omitted, "job body") {
		t.Errorf("oversize letter: id %q seq %d job %d bytes size %d headers %v omitted %q",
			d.JobID, d.StreamSeq, len(d.Job), d.JobSize, d.Headers, d.Omitted)
	}
	if d := list[1]; d.JobID != "fathdr" || d.Headers != nil || !strings.Contains(d.Omitted, "headers") || len(d.Error) > 5<<10 {
		t.Errorf("fat-header letter: id %q headers %d omitted %q error %d bytes", d.JobID, len(d.Headers), d.Omitted, len(d.Error))
	}
	if err := b.topo.ReplayDeadLetter(ctx, d.Seq); !errors.Is(err, queue.ErrNotReplayable) || !strings.Contains(err.Error(), "job body") {
		t.Errorf("replay of a letter without its body: %v, want ErrNotReplayable", err)
	}
}

// TestAnyConsumerTakesUntransformedSessionSubjects: a session token that
// is a wildcard ("*", ">") is stored untransformed, and the shared consumer
// takes it, so no stored job is orphaned. A topology made before (the
// shared consumer filtering only the any subject) is upgraded by Ensure.
func TestAnyConsumerTakesUntransformedSessionSubjects(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)

	// Downgrade the shared consumer to what an older Ensure created.
	c, err := b.topo.AnyConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	legacy := c.CachedInfo().Config
	legacy.FilterSubject, legacy.FilterSubjects = "fleet.job.any", nil
	if _, err := b.js.UpdateConsumer(ctx, b.cfg.JobsStream(), legacy); err != nil {
		t.Fatal(err)
	}

	// Open, as an agent that may update consumers, upgrades it too.
	if _, err := queue.Open(ctx, b.js, b.cfg); err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Config.FilterSubjects; len(got) != 2 || got[1] != "fleet.job.s.>" {
		t.Fatalf("after Open, the shared consumer filters %q %q", info.Config.FilterSubject, got)
	}
	if _, err := b.js.UpdateConsumer(ctx, b.cfg.JobsStream(), legacy); err != nil {
		t.Fatal(err)
	}

	for i, subj := range []string{"fleet.job.s.*", "fleet.job.s.>"} {
		m := nats.NewMsg(subj)
		m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("w%d", i))
		m.Data = []byte(fmt.Sprintf(`{"id":"w%d","command":"echo"}`, i))
		ack, err := b.js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("publish to %s: %v", subj, err)
		}
		stored, err := b.topo.Jobs.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatal(err)
		}
		if stored.Subject != subj {
			t.Fatalf("stored on %q, want untransformed %q", stored.Subject, subj)
		}
	}

	topo, err := queue.Ensure(ctx, b.js, b.cfg)
	if err != nil {
		t.Fatalf("Ensure over the legacy consumer: %v", err)
	}
	c, err = topo.AnyConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for range 2 {
		m := fetchOne(t, c)
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		_, perr := queue.ParseJob(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream, b.cfg)
		var bre *queue.BadRequestError
		if !errors.As(perr, &bre) || !strings.Contains(bre.Reason, "session id") {
			t.Errorf("job on %s parsed as %v, want a bad_request about the session", m.Subject(), perr)
		} else {
			seen[m.Subject()] = bre.JobID
		}
		if err := m.Term(); err != nil {
			t.Fatal(err)
		}
	}
	if seen["fleet.job.s.*"] != "w0" || seen["fleet.job.s.>"] != "w1" {
		t.Errorf("taken by the shared consumer: %v", seen)
	}
	// The partition consumers still own every transformed session job.
	if _, err := topo.Submit(ctx, "real", &queue.Job{ID: "r1", Command: "echo"}); err != nil {
		t.Fatal(err)
	}
	pc, err := topo.PartitionConsumer(ctx, topo.PartitionOf("real"))
	if err != nil {
		t.Fatal(err)
	}
	if m := fetchOne(t, pc); !strings.HasPrefix(m.Subject(), "fleet.job.p.") {
		t.Errorf("session job on %q", m.Subject())
	}
	info, err = c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumPending != 0 {
		t.Errorf("shared consumer has %d pending, want 0", info.NumPending)
	}
}

// TestWaitReturnsTheStoredResult: a result seen on the wire is only a cue;
// the waiter returns what the stream stored. Here the stream refuses the
// sent result for its size and a smaller stand-in is stored instead.
func TestWaitReturnsTheStoredResult(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)
	info, err := b.topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rc := info.Config
	rc.MaxMsgSize = 4096
	if _, err := b.js.UpdateStream(ctx, rc); err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, b, "wire", 3)
	big := &queue.Result{ID: "wire", JobSeq: 3, OK: true, Result: json.RawMessage(`"` + strings.Repeat("w", 5000) + `"`)}
	// Send the refused result until the waiter has certainly seen it on
	// the wire (it subscribes within moments); it must not return it.
	deadline := time.Now().Add(time.Second)
	var refused error
	for time.Now().Before(deadline) {
		refused = b.topo.StoreResult(ctx, big)
		if !errors.Is(refused, queue.ErrTooLarge) {
			t.Fatalf("oversize result: %v, want ErrTooLarge", refused)
		}
		select {
		case o := <-done:
			t.Fatalf("the waiter returned a result the stream refused: ok=%v err=%v", o.r != nil && o.r.OK, o.err)
		case <-time.After(20 * time.Millisecond): // pacing the sends
		}
	}
	if err := b.topo.StoreResult(ctx, queue.TooLargeResult(big, refused)); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-done:
		if o.err != nil || o.r.OK || o.r.Error == nil || o.r.Error.Kind != queue.KindTooLarge {
			t.Fatalf("waiter returned %+v, %v; want the stored too_large result", o.r, o.err)
		}
	case <-ctx.Done():
		t.Fatal("the waiter did not return the stored result")
	}
}

// TestWaitOutlivesAFailedLook: a look that fails (here the results stream
// is gone for a while, as a memory-stored one is after a server restart
// until it is made again; a NATS restart or a leader election fails looks
// the same way) does not end the wait: it looks again until its context
// ends, and returns the result once it is stored.
func TestWaitOutlivesAFailedLook(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2})
	ctx := testCtx(t)
	if err := b.js.DeleteStream(ctx, b.cfg.ResultsStream()); err != nil {
		t.Fatal(err)
	}
	done := waitAsync(ctx, b, "later", 0)
	// Its first looks fail at once; it must still be waiting a while on.
	select {
	case o := <-done:
		t.Fatalf("the wait ended on a failed look: %+v, %v", o.r, o.err)
	case <-time.After(500 * time.Millisecond):
	}
	if _, err := queue.Ensure(ctx, b.js, b.cfg); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "later", JobSeq: 4, OK: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-done:
		if o.err != nil || !o.r.OK || o.r.JobSeq != 4 {
			t.Fatalf("wait: %+v, %v; want the stored result", o.r, o.err)
		}
	case <-ctx.Done():
		t.Fatal("the wait did not return the stored result")
	}
}

// waitOutcome is what a WaitJobResult returned.
type waitOutcome struct {
	r   *queue.Result
	err error
}

// waitAsync runs WaitJobResult for id and seq on its own goroutine (which
// ends with ctx at the latest) and hands over what it returned.
func waitAsync(ctx context.Context, b *testBundle, id string, seq uint64) <-chan waitOutcome {
	done := make(chan waitOutcome, 1)
	go func() {
		r, err := b.topo.WaitJobResult(ctx, b.nc, id, seq)
		done <- waitOutcome{r, err}
	}()
	return done
}
