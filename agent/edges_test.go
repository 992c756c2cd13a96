package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestEdgesEveryMessageEnds publishes, with a plain nats.go client and no
// procfleet code on the way, messages that used to never end or to end
// under the wrong id: a job whose result does not fit the server's max
// payload, jobs on wildcard session subjects, jobs with invalid or
// disagreeing ids, an id reused by a later job, and jobs whose dead letter
// would not fit. Each must end in exactly one stored outcome under the id
// queue.OutcomeID documents, leave the jobs stream, and leave the agent
// serving.
func TestEdgesEveryMessageEnds(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	// A short jobs dedup window makes "an id reused after the window"
	// reachable in a test.
	cfg.Agent.Queue.DedupWindow = time.Second
	f := fleettest.StartFleet(t, cfg)
	nc := f.Server.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo := f.Topology()
	limit := int(nc.MaxPayload())
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	publish := func(t *testing.T, subject, msgID string, hdr nats.Header, body []byte) *jetstream.PubAck {
		t.Helper()
		m := nats.NewMsg(subject)
		for k, v := range hdr {
			m.Header[k] = v
		}
		if msgID != "" {
			m.Header.Set(nats.MsgIdHdr, msgID)
		}
		m.Data = body
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("publish to %s: %v", subject, err)
		}
		return ack
	}
	// outcome waits for the result of the job message at seq under id and
	// checks that it is the only one of that job message.
	outcome := func(t *testing.T, id string, seq uint64) *queue.Result {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		defer cancel()
		r, err := f.Client.ResultFor(wctx, id, seq, nil)
		if err != nil {
			t.Fatalf("result of %s (job seq %d): %v", id, seq, err)
		}
		if r.ID != id || r.JobSeq != seq {
			t.Fatalf("result of %s (job seq %d) is %s (job seq %d)", id, seq, r.ID, r.JobSeq)
		}
		return r
	}
	results := func(t *testing.T, id string) uint64 {
		t.Helper()
		subj := "fleet.result." + id
		info, err := topo.Results.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[subj]
	}
	letter := func(t *testing.T, id string) queue.DeadLetterEntry {
		t.Helper()
		var found []queue.DeadLetterEntry
		fleettest.Eventually(t, 30*time.Second, func() error {
			all, err := topo.DeadLetters(ctx, 0)
			if err != nil {
				return err
			}
			found = found[:0]
			for _, d := range all {
				if d.JobID == id {
					found = append(found, d)
				}
			}
			if len(found) != 1 {
				return fmt.Errorf("%d dead letters for %s, want 1", len(found), id)
			}
			return nil
		})
		return found[0]
	}
	gone := func(t *testing.T, seq uint64) {
		t.Helper()
		fleettest.Eventually(t, 30*time.Second, func() error {
			if _, err := topo.Jobs.GetMsg(ctx, seq); err == nil {
				return fmt.Errorf("job at stream sequence %d still in %s", seq, topo.Config.JobsStream())
			}
			return nil
		})
	}
	wantErr := func(t *testing.T, r *queue.Result, kind string, in ...string) {
		t.Helper()
		if r.OK || r.Error == nil || r.Error.Kind != kind {
			t.Fatalf("result %s: ok=%v error %+v, want kind %s", r.ID, r.OK, r.Error, kind)
		}
		for _, s := range in {
			if !strings.Contains(r.Error.Message, s) {
				t.Errorf("result %s: message %q does not mention %q", r.ID, r.Error.Message, s)
			}
		}
	}

	t.Run("result too large to store", func(t *testing.T) {
		// The job fits, its echo (payload plus envelope) does not.
		body := []byte(`{"id":"huge-1","command":"echo","payload":"`)
		body = append(body, strings.Repeat("x", limit-150-len(body)-2)...)
		body = append(body, `"}`...)
		if len(body) != limit-150 {
			t.Fatalf("body is %d bytes", len(body))
		}
		ack := publish(t, "fleet.job.any", "", nil, body)
		r := outcome(t, "huge-1", ack.Sequence)
		wantErr(t, r, queue.KindTooLarge, fmt.Sprint(limit), "max payload")
		gone(t, ack.Sequence)
		if n := results(t, "huge-1"); n != 1 {
			t.Errorf("%d results stored, want 1", n)
		}
	})

	t.Run("wildcard session tokens", func(t *testing.T) {
		for i, subj := range []string{"fleet.job.s.*", "fleet.job.s.>"} {
			id := fmt.Sprintf("wild-%d", i)
			ack := publish(t, subj, "", nil, []byte(`{"id":"`+id+`","command":"echo"}`))
			wantErr(t, outcome(t, id, ack.Sequence), queue.KindBadRequest, "session id")
			gone(t, ack.Sequence)
			// The letter keeps the subject: replayed, it is the same bad
			// request, not an anonymous job.
			if d := letter(t, id); d.Kind != queue.KindBadRequest || d.StreamSeq != ack.Sequence || d.Subject != subj {
				t.Errorf("dead letter of %s: %+v", id, d)
			}
		}
	})

	t.Run("invalid body id", func(t *testing.T) {
		ack := publish(t, "fleet.job.any", "good-hdr", nil, []byte(`{"id":"a.b","command":"echo"}`))
		wantErr(t, outcome(t, "good-hdr", ack.Sequence), queue.KindBadRequest, `"a.b"`)
		gone(t, ack.Sequence)
		letter(t, "good-hdr")

		ack = publish(t, "fleet.job.s.ids", "", nil, []byte(`{"id":"a.b","command":"echo"}`))
		seqID := fmt.Sprintf("seq-%d", ack.Sequence)
		wantErr(t, outcome(t, seqID, ack.Sequence), queue.KindBadRequest, `"a.b"`)
		gone(t, ack.Sequence)
		letter(t, seqID)

		// Not UTF-8, in the body and in the header.
		ack = publish(t, "fleet.job.any", "bad\xffhdr", nil, []byte("{\"id\":\"\xfe\xff\",\"command\":\"echo\"}"))
		seqID = fmt.Sprintf("seq-%d", ack.Sequence)
		wantErr(t, outcome(t, seqID, ack.Sequence), queue.KindBadRequest)
		gone(t, ack.Sequence)
	})

	t.Run("id squatting", func(t *testing.T) {
		// A body id that disagrees with the Nats-Msg-Id is a bad request,
		// filed under the Nats-Msg-Id: it cannot take the body id.
		ack := publish(t, "fleet.job.any", "att-x", nil, []byte(`{"id":"squat-1","command":"echo","payload":"attacker"}`))
		wantErr(t, outcome(t, "att-x", ack.Sequence), queue.KindBadRequest, "disagrees")
		gone(t, ack.Sequence)
		if n := results(t, "squat-1"); n != 0 {
			t.Fatalf("%d results under the squatted id", n)
		}
		ack = publish(t, "fleet.job.any", "squat-1", nil, []byte(`{"id":"squat-1","command":"echo","payload":"owner"}`))
		if r := outcome(t, "squat-1", ack.Sequence); !r.OK || string(r.Result) != `"owner"` {
			t.Fatalf("owner's result: %+v", r)
		}
	})

	t.Run("id reused after the jobs dedup window", func(t *testing.T) {
		first := publish(t, "fleet.job.any", "reuse-1", nil, []byte(`{"id":"reuse-1","command":"echo","payload":"first"}`))
		if r := outcome(t, "reuse-1", first.Sequence); !r.OK || string(r.Result) != `"first"` {
			t.Fatalf("first job's result: %+v", r)
		}
		// Republish until the jobs stream no longer takes it for a
		// duplicate: the id is now a new job's.
		var second *jetstream.PubAck
		fleettest.Eventually(t, 30*time.Second, func() error {
			second = publish(t, "fleet.job.any", "reuse-1", nil, []byte(`{"id":"reuse-1","command":"echo","payload":"second"}`))
			if second.Duplicate {
				return fmt.Errorf("still a duplicate of sequence %d", second.Sequence)
			}
			return nil
		})
		if r := outcome(t, "reuse-1", second.Sequence); !r.OK || string(r.Result) != `"second"` {
			t.Fatalf("second job's result: %+v (first job's answer?)", r)
		}
		if r := outcome(t, "reuse-1", first.Sequence); string(r.Result) != `"first"` {
			t.Fatalf("first job's result changed: %+v", r)
		}
		if n := results(t, "reuse-1"); n != 2 {
			t.Errorf("%d results under the reused id, want 2 (one per job)", n)
		}
	})

	t.Run("dead letter too large to store", func(t *testing.T) {
		// A bad request near the max payload: the letter cannot hold the
		// body, so it keeps the headers and the stream sequence instead.
		body := []byte(`{"id":"bigbad","command":7,"payload":"`)
		body = append(body, strings.Repeat("x", limit-300-len(body)-2)...)
		body = append(body, `"}`...)
		ack := publish(t, "fleet.job.any", "", nats.Header{"Trace-Id": {"t-1"}}, body)
		wantErr(t, outcome(t, "bigbad", ack.Sequence), queue.KindBadRequest, `"command"`)
		gone(t, ack.Sequence)
		d := letter(t, "bigbad")
		if len(d.Job) != 0 || d.JobSize != len(body) || d.StreamSeq != ack.Sequence ||
			d.Headers["Trace-Id"][0] != "t-1" || !strings.Contains(d.Omitted, "job body") {
			t.Errorf("oversize dead letter: job %d bytes, size %d, seq %d, headers %v, omitted %q",
				len(d.Job), d.JobSize, d.StreamSeq, d.Headers, d.Omitted)
		}
		if err := topo.ReplayDeadLetter(ctx, d.Seq); err == nil {
			t.Error("replay of a letter without its body succeeded")
		}

		// A job near the limit that kills its worker: exhausted, and
		// its letter, too, keeps all but the body.
		body = []byte(`{"id":"bigcrash","command":"crash","max_attempts":1,"payload":"`)
		body = append(body, strings.Repeat("x", limit-300-len(body)-2)...)
		body = append(body, `"}`...)
		ack = publish(t, "fleet.job.s.crashes", "bigcrash", nil, body)
		wantErr(t, outcome(t, "bigcrash", ack.Sequence), queue.KindExhausted, "exit status 3")
		gone(t, ack.Sequence)
		if d := letter(t, "bigcrash"); d.Kind != queue.KindExhausted || len(d.Job) != 0 || d.Session != "crashes" ||
			d.Subject != "fleet.job.s.crashes" || !strings.Contains(d.Omitted, "job body") {
			t.Errorf("exhausted oversize letter: %+v", d.DeadLetter)
		}

		// Headers as large as the jobs stream takes (64 KiB) next to a
		// body that fills the rest.
		fat := nats.Header{"Fat": {strings.Repeat("h", 60<<10)}}
		body = []byte(`{"id":"fathdr","command":"echo","max_attempts":-1,"payload":"`)
		body = append(body, strings.Repeat("x", limit-(60<<10)-300-len(body)-2)...)
		body = append(body, `"}`...)
		ack = publish(t, "fleet.job.any", "", fat, body)
		wantErr(t, outcome(t, "fathdr", ack.Sequence), queue.KindBadRequest, "max_attempts")
		gone(t, ack.Sequence)
		if d := letter(t, "fathdr"); len(d.Headers["Fat"]) != 1 || len(d.Job) != 0 || !strings.Contains(d.Omitted, "job body") {
			t.Errorf("fat-header letter: headers %d, job %d bytes, omitted %q", len(d.Headers), len(d.Job), d.Omitted)
		}
	})

	t.Run("dead letter replay", func(t *testing.T) {
		// A replay is a new job message: its outcome is stored next to
		// the first run's, not deduplicated against it.
		ack := publish(t, "fleet.job.s.replays", "replay-1", nil, []byte(`{"id":"replay-1","command":"retry","max_attempts":1}`))
		wantErr(t, outcome(t, "replay-1", ack.Sequence), queue.KindExhausted, "try again")
		d := letter(t, "replay-1")
		if err := topo.ReplayDeadLetter(ctx, d.Seq); err != nil {
			t.Fatal(err)
		}
		var r *queue.Result
		fleettest.Eventually(t, 30*time.Second, func() error {
			var err error
			r, err = topo.GetResult(ctx, "replay-1")
			if err != nil {
				return err
			}
			if r.JobSeq == ack.Sequence {
				return fmt.Errorf("only the first run's result")
			}
			return nil
		})
		wantErr(t, r, queue.KindExhausted, "try again")
		gone(t, r.JobSeq)
		if r.Session != "replays" {
			t.Errorf("replayed job ran in session %q", r.Session)
		}
	})

	t.Run("results stream max message size lowered under a running agent", func(t *testing.T) {
		// The agent read the stream's limits at start: the stream, not
		// the agent's size check, refuses the result.
		setMax := func(n int32) {
			t.Helper()
			info, err := topo.Results.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c := info.Config
			c.MaxMsgSize = n
			if _, err := js.UpdateStream(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		setMax(4096)
		defer setMax(-1)
		ack := publish(t, "fleet.job.any", "", nil, []byte(`{"id":"msgsize-1","command":"echo","payload":"`+strings.Repeat("x", 5000)+`"}`))
		wantErr(t, outcome(t, "msgsize-1", ack.Sequence), queue.KindTooLarge, "maximum")
		gone(t, ack.Sequence)
		if n := results(t, "msgsize-1"); n != 1 {
			t.Errorf("%d results stored, want 1", n)
		}
	})

	// The agent still serves, and the fleet holds no job.
	r, err := f.Client.SubmitAndWait(ctx, "after", &queue.Job{Command: "echo", Payload: json.RawMessage(`"still here"`)})
	if err != nil || !r.OK {
		t.Fatalf("agent after the edge cases: %+v, %v", r, err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		info, err := topo.Jobs.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs left in the jobs stream", info.State.Msgs)
		}
		return nil
	})
	if c := f.Agents[0].Counters(); c.Exhausted > 3 {
		t.Errorf("counters %+v: only bigcrash and replay-1 (twice) should have exhausted their attempts", c)
	}
}

// TestTinyMaxPayloadEndsEveryMessage: on a server whose max payload is
// small, an outcome can be too large to store even without the job body: a
// result echoing its payload, and the dead letter of a job whose subject
// holds a long invalid session token. Each message still ends, once, and
// the agent keeps serving.
func TestTinyMaxPayloadEndsEveryMessage(t *testing.T) {
	t.Parallel()
	const maxPayload = 2048
	cfg := fleetConfig(1, 1)
	cfg.Server = fleettest.StartServer(t, fleettest.WithServerConfig(func(c *embedded.Config) {
		c.Options = &server.Options{MaxPayload: maxPayload}
	}))
	f := fleettest.StartFleet(t, cfg)
	nc := f.Server.Connect(t)
	if got := nc.MaxPayload(); got != maxPayload {
		t.Fatalf("server max payload %d, want %d", got, maxPayload)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	publish := func(subject, body string) *jetstream.PubAck {
		t.Helper()
		ack, err := js.Publish(ctx, subject, []byte(body))
		if err != nil {
			t.Fatalf("publish to %s: %v", subject, err)
		}
		return ack
	}
	wait := func(id string, seq uint64) *queue.Result {
		t.Helper()
		r, err := f.Client.ResultFor(ctx, id, seq, nil)
		if err != nil {
			t.Fatalf("result of %s: %v", id, err)
		}
		return r
	}

	echo := publish("fleet.job.any", `{"id":"tiny-echo","command":"echo","payload":"`+strings.Repeat("x", maxPayload-200)+`"}`)
	if r := wait("tiny-echo", echo.Sequence); r.OK || r.Error == nil || r.Error.Kind != queue.KindTooLarge ||
		!strings.Contains(r.Error.Message, fmt.Sprint(maxPayload)) {
		t.Errorf("echo over the max payload: %+v (error %+v)", r, r.Error)
	}

	longSession := strings.Repeat("s", 1500) + "!"
	bad := publish("fleet.job.s."+longSession, `{"id":"tiny-bad","command":"echo"}`)
	r := wait("tiny-bad", bad.Sequence)
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindBadRequest || !strings.Contains(r.Error.Message, "session id") || r.Session != "" {
		t.Errorf("long invalid session: %+v (error %+v)", r, r.Error)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		dl, err := f.Topology().DeadLetters(ctx, 0)
		if err != nil {
			return err
		}
		if len(dl) != 1 || dl[0].JobID != "tiny-bad" || !strings.Contains(dl[0].Omitted, "subject") {
			return fmt.Errorf("dead letters %+v", dl)
		}
		return nil
	})
	fleettest.Eventually(t, 30*time.Second, func() error {
		info, err := f.Topology().Jobs.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs left in the jobs stream", info.State.Msgs)
		}
		return nil
	})
	if r, err := f.Client.SubmitAndWait(ctx, "after", &queue.Job{Command: "echo", Payload: json.RawMessage(`"ok"`)}); err != nil || !r.OK {
		t.Fatalf("agent after the edge cases: %+v, %v", r, err)
	}
}
