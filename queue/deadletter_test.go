package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/queue"
)

// fetchOne pulls one job from c, waiting up to a few seconds.
func fetchOne(t *testing.T, c jetstream.Consumer) jetstream.Msg {
	t.Helper()
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		return m
	}
	t.Fatalf("no message: %v", batch.Error())
	return nil
}

// TestWatchMaxDeliveries: a job that reaches the consumer's MaxDeliver
// without a verdict ends as an exhausted result plus a DLQ entry, and leaves
// the work-queue stream.
func TestWatchMaxDeliveries(t *testing.T) {
	t.Parallel()
	for _, q := range []string{"", "q2"} {
		t.Run("queue "+q, func(t *testing.T) {
			t.Parallel()
			testWatchMaxDeliveries(t, q)
		})
	}
}

func testWatchMaxDeliveries(t *testing.T, q string) {
	b := setup(t, queue.Config{Partitions: 2, MaxDeliver: 2, Queue: q})
	ctx := testCtx(t)

	watchCtx, stop := context.WithCancel(ctx)
	defer stop()
	if err := b.topo.WatchMaxDeliveries(watchCtx, b.nc, "watcher", zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}

	job := &queue.Job{ID: "poison", Command: "crash", Payload: json.RawMessage(`{"x":1}`)}
	ack, err := b.topo.Submit(ctx, "s1", job)
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.topo.PartitionConsumer(ctx, b.topo.PartitionOf("s1"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		m := fetchOne(t, c)
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	// The server notices the exceeded delivery count when it next tries to
	// deliver; a waiting pull request gives it that chance.
	eventually(t, 10*time.Second, func() error {
		batch, err := c.FetchNoWait(1)
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			return fmt.Errorf("job delivered a third time: %s", m.Subject())
		}
		dl, err := b.topo.DeadLetters(ctx, 10)
		if err != nil {
			return err
		}
		if len(dl) != 1 {
			return fmt.Errorf("%d dead letters", len(dl))
		}
		return nil
	})

	dl, err := b.topo.DeadLetters(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	d := dl[0]
	if d.JobID != "poison" || d.Session != "s1" || d.Subject != b.cfg.SessionSubject("s1") || d.Kind != queue.KindExhausted ||
		d.Attempts != 2 || d.StreamSeq != ack.Sequence || d.Agent != "watcher" || string(d.Job) != string(mustEncode(t, job)) {
		t.Errorf("dead letter = %+v", d)
	}
	// Found by its sequence in its own queue's stream.
	r, err := b.topo.GetJobResult(ctx, "poison", ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindExhausted || r.Session != "s1" || r.Queue != b.cfg.QueueName() {
		t.Errorf("result = %+v", r)
	}
	eventually(t, 5*time.Second, func() error {
		info, err := b.topo.Jobs.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs still in the stream", info.State.Msgs)
		}
		return nil
	})
}

func mustEncode(t *testing.T, j *queue.Job) []byte {
	t.Helper()
	data, err := queue.EncodeJob(j)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestDeadLetterReplay: a dead-lettered job is listed, replayed under its
// session's partition with its id, and removed from the DLQ.
func TestDeadLetterReplay(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 8})
	ctx := testCtx(t)

	// A job whose id lives only in the header, published by a plain client
	// with a user header.
	msg := nats.NewMsg("fleet.job.s.sess-7")
	msg.Data = []byte(`{"command":"boom"}`)
	msg.Header.Set("Nats-Msg-Id", "hdr-id")
	msg.Header.Set("Trace-Id", "t-1")
	if _, err := b.js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	p := b.topo.PartitionOf("sess-7")
	c, err := b.topo.PartitionConsumer(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	m := fetchOne(t, c)
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	job, err := queue.ParseJob(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	// What an agent does when attempts run out: result, DLQ, term.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: job.ID, JobSeq: md.Sequence.Stream, Error: &queue.ErrorInfo{Kind: queue.KindExhausted, Message: "x"}}); err != nil {
		t.Fatal(err)
	}
	// Another job that reused the id (an hour later, say) has its own
	// result, which the replay must leave alone.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: job.ID, JobSeq: md.Sequence.Stream + 1000, OK: true, Result: json.RawMessage(`"other"`)}); err != nil {
		t.Fatal(err)
	}
	d := &queue.DeadLetter{
		JobID: job.ID, Subject: m.Subject(), Job: m.Data(), Headers: m.Headers(), Kind: queue.KindExhausted,
		Error: "worker crashed 5 times", Attempts: 5, Agent: "a1", StreamSeq: md.Sequence.Stream,
	}
	for range 2 { // written twice (crash before term): one entry
		if err := b.topo.WriteDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.Term(); err != nil {
		t.Fatal(err)
	}
	// A second, non-JSON dead letter.
	if err := b.topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: "", Subject: "fleet.job.any", Job: []byte("garbage"),
		Kind: queue.KindBadRequest, Error: "not JSON", StreamSeq: 99}); err != nil {
		t.Fatal(err)
	}

	list, err := b.topo.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d dead letters, want 2: %+v", len(list), list)
	}
	first, second := list[0], list[1]
	if first.JobID != "hdr-id" || first.Session != "sess-7" || first.Subject != "fleet.job.s.sess-7" || first.At.IsZero() {
		t.Errorf("first dead letter %+v", first)
	}
	if len(second.Job) != 0 || string(second.JobRaw) != "garbage" {
		t.Errorf("non-JSON body not kept raw: job %q raw %q", second.Job, second.JobRaw)
	}
	if limited, err := b.topo.DeadLetters(ctx, 1); err != nil || len(limited) != 1 || limited[0].Seq != first.Seq {
		t.Errorf("DeadLetters(1) = %+v, %v", limited, err)
	}

	if err := b.topo.ReplayDeadLetter(ctx, first.Seq); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.ReplayDeadLetter(ctx, first.Seq); !errors.Is(err, queue.ErrDeadLetterNotFound) {
		t.Errorf("second replay: %v, want ErrDeadLetterNotFound", err)
	}
	// The old exhausted result is gone, so a waiter waits for the new run;
	// the other job's result stays.
	if r, err := b.topo.GetJobResult(ctx, "hdr-id", md.Sequence.Stream); !errors.Is(err, queue.ErrResultNotFound) {
		t.Errorf("old result after replay: %+v, %v", r, err)
	}
	if r, err := b.topo.GetJobResult(ctx, "hdr-id", md.Sequence.Stream+1000); err != nil || string(r.Result) != `"other"` {
		t.Errorf("the other job's result after replay: %+v, %v", r, err)
	}
	oldSeq := md.Sequence.Stream
	m = fetchOne(t, c)
	md, err = m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject() != fmt.Sprintf("fleet.job.p.%d.sess-7", p) {
		t.Errorf("replayed to %q", m.Subject())
	}
	replayed, err := queue.ParseJob(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if replayed.ID != "hdr-id" || replayed.Command != "boom" || replayed.Session != "sess-7" {
		t.Errorf("replayed job %+v", replayed)
	}
	if m.Headers().Get("Trace-Id") != "t-1" {
		t.Errorf("user header lost: %v", m.Headers())
	}
	if err := m.Ack(); err != nil {
		t.Fatal(err)
	}
	// The new run's verdict is stored despite the earlier exhausted one:
	// the replay is a new job message, with its own sequence.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "hdr-id", JobSeq: md.Sequence.Stream, OK: true}); err != nil {
		t.Fatal(err)
	}
	if r, err := b.topo.GetJobResult(ctx, "hdr-id", md.Sequence.Stream); err != nil || !r.OK || md.Sequence.Stream == oldSeq {
		t.Errorf("result after replay = %+v, %v", r, err)
	}
	list, err = b.topo.DeadLetters(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Seq != second.Seq {
		t.Errorf("DLQ after replay: %+v", list)
	}
}

// TestDeadLetterReplayDuplicates: a replay the jobs stream takes for a
// duplicate is a replay only when the message it duplicates is this
// replay's own (retried after the letter's delete failed). Anyone's other
// message under the replay id would swallow the job: the letter and the old
// result stay, and the replay is refused. A body that cannot carry the id
// (not JSON) keeps its old result too: its rerun is filed under another id.
func TestDeadLetterReplayDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	letter := func(id, body string, seq uint64) queue.DeadLetterEntry {
		t.Helper()
		if err := b.topo.StoreResult(ctx, &queue.Result{ID: id, JobSeq: seq, Error: &queue.ErrorInfo{Kind: queue.KindExhausted, Message: "x"}}); err != nil {
			t.Fatal(err)
		}
		if err := b.topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: id, Subject: "fleet.job.any", Job: []byte(body),
			Kind: queue.KindExhausted, Error: "x", StreamSeq: seq}); err != nil {
			t.Fatal(err)
		}
		list, err := b.topo.DeadLetters(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return list[len(list)-1]
	}
	publish := func(body, msgID string) {
		t.Helper()
		msg := nats.NewMsg("fleet.job.any")
		msg.Data = []byte(body)
		msg.Header.Set("Nats-Msg-Id", msgID)
		if _, err := b.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	jobs := func() uint64 {
		t.Helper()
		info, err := b.topo.Jobs.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	left := func(seq uint64) bool {
		t.Helper()
		_, err := b.topo.DLQ.GetMsg(ctx, seq)
		return err == nil
	}

	// Another message squats the replay id.
	squatted := letter("vict", `{"id":"vict","command":"echo"}`, 50)
	publish(`{"command":"echo","payload":"not vict"}`, fmt.Sprintf("vict-replay-%d", squatted.Seq))
	if err := b.topo.ReplayDeadLetter(ctx, squatted.Seq); !errors.Is(err, queue.ErrNotReplayable) {
		t.Fatalf("replay under a squatted id: %v, want ErrNotReplayable", err)
	}
	if !left(squatted.Seq) {
		t.Errorf("the refused replay's dead letter is gone")
	}
	if _, err := b.topo.GetJobResult(ctx, "vict", 50); err != nil {
		t.Errorf("the refused replay's old result: %v", err)
	}

	// This replay's own earlier publish: the replay completes, one job.
	own := letter("mine", `{"id":"mine","command":"echo"}`, 60)
	publish(`{"id":"mine","command":"echo"}`, fmt.Sprintf("mine-replay-%d", own.Seq))
	before := jobs()
	if err := b.topo.ReplayDeadLetter(ctx, own.Seq); err != nil {
		t.Fatalf("replay after its own publish: %v", err)
	}
	if left(own.Seq) || jobs() != before {
		t.Errorf("after the retried replay: letter left %v, jobs %d, want gone and %d", left(own.Seq), jobs(), before)
	}

	// Not JSON: the rerun cannot carry the id, so the old result stays.
	raw := letter("seq-7", "garbage", 7)
	if err := b.topo.ReplayDeadLetter(ctx, raw.Seq); err != nil {
		t.Fatalf("replay of a body that is not JSON: %v", err)
	}
	if _, err := b.topo.GetJobResult(ctx, "seq-7", 7); err != nil {
		t.Errorf("the old result of a replayed body that is not JSON: %v", err)
	}
}
