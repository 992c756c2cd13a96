package reliability_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// TestBadInput sends malformed input through the fleet, on the wire from
// the publisher to the agent and from the worker to the agent. Every case
// ends in a clear error: the submission is refused (nothing accepted), or
// the job gets a failed result naming the problem (and, when it can never
// run, a dead letter). Nothing accepted is lost, and after every case the
// agent still serves other jobs.
func TestBadInput(t *testing.T) {
	t.Parallel()
	armDir := t.TempDir()
	cfg, _ := fastFleet(t, 1, 2)
	// A small max frame makes "over the limit" reachable without a
	// megabyte-sized NATS message.
	const maxFrame = 64 << 10
	cfg.Agent.Pool.Worker.MaxFrame = maxFrame
	cfg.Agent.Pool.Worker.Env = append(cfg.Agent.Pool.Worker.Env, envArmDir+"="+armDir)
	cfg.Agent.Pool.BackoffMin = 20 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	js := f.Topology().JS
	big := func(n int) json.RawMessage { return json.RawMessage(`"` + strings.Repeat("x", n) + `"`) }

	cases := []struct {
		name string
		// Either a raw message as any NATS client could publish it (no
		// validation on the way), with body on subject...
		subject, body string
		// ... or a job submitted through the client library.
		session string
		job     *queue.Job
		// arm makes the next worker to start do this before its ready
		// frame (see envArmDir).
		arm string

		wantSubmitErr error  // the submission is refused: nothing accepted
		wantKind      string // the result's error kind; "" for ok
		wantMsg       string // in the result's error message
		wantStartErr  string // in the pool's last error after the armed start
	}{
		{name: "body not JSON", subject: "fleet.job.s.bad1", body: `{"command":`,
			wantKind: queue.KindBadRequest, wantMsg: "not valid JSON"},
		{name: "body not an object", subject: "fleet.job.any", body: `["echo"]`,
			wantKind: queue.KindBadRequest, wantMsg: "must be a JSON object"},
		{name: "field of the wrong type", subject: "fleet.job.any", body: `{"command":"echo","timeout_ms":"soon"}`,
			wantKind: queue.KindBadRequest, wantMsg: `"timeout_ms" has the wrong type`},
		{name: "invalid session token on the wire", subject: "fleet.job.s.bad:token", body: `{"command":"echo"}`,
			wantKind: queue.KindBadRequest, wantMsg: `session id "bad:token"`},
		{name: "session token too long on the wire", subject: "fleet.job.s." + strings.Repeat("s", 129), body: `{"command":"echo"}`,
			wantKind: queue.KindBadRequest, wantMsg: "must be 1-128 characters"},
		{name: "invalid session token through the client", session: "bad token", job: &queue.Job{Command: "echo"},
			wantSubmitErr: queue.ErrBadRequest},
		{name: "payload over the NATS max payload", session: "big", job: &queue.Job{Command: "echo", Payload: big(2 << 20)},
			wantSubmitErr: nats.ErrMaxPayload},
		{name: "payload over the worker's max frame", session: "big", job: &queue.Job{Command: "echo", Payload: big(maxFrame + 1)},
			wantKind: queue.KindBadRequest, wantMsg: "exceeds the worker's max frame"},
		{name: "unknown command", session: "u", job: &queue.Job{Command: "no-such-command"},
			wantKind: queue.KindApp, wantMsg: "unknown command: no-such-command"},
		{name: "worker sends a zero-length frame", session: "z", job: &queue.Job{Command: "zero", MaxAttempts: 2},
			wantKind: queue.KindExhausted, wantMsg: "zero-length frame"},
		{name: "worker sends a frame length over the limit", session: "o", job: &queue.Job{Command: "oversized", MaxAttempts: 2},
			wantKind: queue.KindExhausted, wantMsg: "exceeds max frame size"},
		{name: "worker sends a frame that is not JSON", session: "g", job: &queue.Job{Command: "garbage", MaxAttempts: 2},
			wantKind: queue.KindExhausted, wantMsg: "not a JSON object"},
		{name: "worker exits with status 0 mid-call", session: "e", job: &queue.Job{Command: "exit0", MaxAttempts: 2},
			wantKind: queue.KindExhausted, wantMsg: "exit status 0"},
		{name: "worker closes stdout and keeps running", session: "c", job: &queue.Job{Command: "close_stdout", MaxAttempts: 2},
			wantKind: queue.KindExhausted, wantMsg: "stdout closed while the process kept running"},
		// The crash makes the pool start a replacement, which writes to
		// stdout before its ready frame: it is refused and replaced again.
		{name: "worker writes to stdout before it is ready", arm: "garbage", session: "r", job: &queue.Job{Command: "crash", MaxAttempts: 1},
			wantKind: queue.KindExhausted, wantMsg: "exit status 3", wantStartErr: "printed to stdout before its ready frame"},
	}
	var deadLetters []string
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Start from a full pool, so that no replacement from the
			// previous case is still starting (it would take the armed
			// mode).
			fullPool(t, f)
			before := f.Agents[0].Pool().Stats()
			if c.arm != "" {
				if err := os.WriteFile(filepath.Join(armDir, "start-"+c.arm), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			id := fmt.Sprintf("bad-%d", i)
			var err error
			if c.job != nil {
				c.job.ID = id
				_, err = f.Client.Submit(ctx, c.session, c.job)
			} else {
				m := nats.NewMsg(c.subject)
				m.Header.Set(nats.MsgIdHdr, id)
				m.Data = []byte(c.body)
				_, err = js.PublishMsg(ctx, m)
			}
			switch {
			case c.wantSubmitErr != nil:
				if !errors.Is(err, c.wantSubmitErr) {
					t.Fatalf("submit: got %v, want %v", err, c.wantSubmitErr)
				}
				t.Logf("refused at submission: %v", err)
				// Nothing was accepted, so nothing runs: a job published
				// next still gets its result first.
			case err != nil:
				t.Fatalf("submit: %v", err)
			default:
				r, err := f.Client.Result(ctx, id, nil)
				if err != nil {
					t.Fatalf("no result for %s (lost?): %v", id, err)
				}
				switch {
				case c.wantKind == "" && !r.OK:
					t.Fatalf("want ok, got %+v", r.Error)
				case c.wantKind != "" && (r.OK || r.Error == nil || r.Error.Kind != c.wantKind || !strings.Contains(r.Error.Message, c.wantMsg)):
					t.Fatalf("want error kind %q with %q, got ok=%v error=%+v", c.wantKind, c.wantMsg, r.OK, r.Error)
				}
				if r.Error != nil {
					t.Logf("result: %s: %s", r.Error.Kind, r.Error.Message)
				}
				if c.wantKind == queue.KindBadRequest || c.wantKind == queue.KindExhausted {
					deadLetters = append(deadLetters, id)
				}
			}
			if c.arm != "" {
				// The armed start happened, was refused with a clear
				// error, and the pool recovered.
				var st pool.Stats
				fleettest.Eventually(t, 20*time.Second, func() error {
					st = f.Agents[0].Pool().Stats()
					if st.StartFailures <= before.StartFailures {
						return fmt.Errorf("no start failure yet (%+v)", st)
					}
					return nil
				})
				t.Logf("pool: %d start failures, last error: %s", st.StartFailures, st.LastError)
				if !strings.Contains(st.LastError, c.wantStartErr) {
					t.Errorf("the refused start is not explained: %q lacks %q", st.LastError, c.wantStartErr)
				}
			}
			// The agent keeps serving.
			after, err := f.Client.SubmitAndWait(ctx, "after", &queue.Job{ID: id + "-after", Command: "echo", Payload: json.RawMessage(`"still here"`)})
			if err != nil || !after.OK {
				t.Fatalf("the agent stopped serving: %v %+v", err, after)
			}
		})
	}
	// Every job that can never run is in the dead-letter stream, once.
	fleettest.Eventually(t, 10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		dl, err := f.Topology().DeadLetters(ctx, 100)
		if err != nil {
			return err
		}
		var got []string
		for _, d := range dl {
			got = append(got, d.JobID)
		}
		slices.Sort(got)
		slices.Sort(deadLetters)
		if !slices.Equal(got, deadLetters) {
			return fmt.Errorf("dead letters for %v, want %v", got, deadLetters)
		}
		return nil
	})
}

// fullPool waits until the fleet's first agent has all its workers ready.
func fullPool(t *testing.T, f *fleettest.Fleet) {
	t.Helper()
	fleettest.Eventually(t, 20*time.Second, func() error {
		st := f.Agents[0].Pool().Stats()
		if st.Idle+st.Busy != st.Size || st.Starting != 0 || st.Stopping != 0 {
			return fmt.Errorf("pool not at full strength: %d idle, %d busy, %d starting, %d stopping of %d",
				st.Idle, st.Busy, st.Starting, st.Stopping, st.Size)
		}
		return nil
	})
}
