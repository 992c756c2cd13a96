package agent_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestAttemptEvents pins the dashboard's feed: each attempt that ends on a
// worker publishes one event on <prefix>.event.attempt.<id> with the agent,
// the worker, its pid, the times and the outcome (a retryable failure that
// will run again is "retry", the last one "failed").
func TestAttemptEvents(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 1)
	f := fleettest.StartFleet(t, cfg)
	nc := f.Server.Connect(t)
	events := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(f.Topology().Config.AttemptEventSubject("*"), events)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	result(t, f, submit(t, f, "s1", &queue.Job{ID: "ev-ok", Command: "echo", Payload: json.RawMessage(`1`)}))
	result(t, f, submit(t, f, "s1", &queue.Job{ID: "ev-retry", Command: "retry", MaxAttempts: 2}))
	got := map[string][]queue.AttemptEvent{}
	deadline := time.After(20 * time.Second)
	for len(got["ev-ok"]) < 1 || len(got["ev-retry"]) < 2 {
		select {
		case m := <-events:
			var ev queue.AttemptEvent
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				t.Fatalf("event %s: %v", m.Data, err)
			}
			if m.Subject != f.Topology().Config.AttemptEventSubject(ev.ID) {
				t.Fatalf("event of %s on %s", ev.ID, m.Subject)
			}
			got[ev.ID] = append(got[ev.ID], ev)
		case <-deadline:
			t.Fatalf("events so far: %+v", got)
		}
	}
	ok := got["ev-ok"][0]
	if ok.Outcome != "ok" || ok.Agent != "agent-1" || ok.Worker == "" || ok.WorkerPID <= 0 || ok.Attempt != 1 ||
		ok.Session != "s1" || ok.Command != "echo" || ok.StartedAt.IsZero() || ok.FinishedAt.Before(ok.StartedAt) || ok.JobSeq == 0 {
		t.Errorf("ok event: %+v", ok)
	}
	r := got["ev-retry"]
	if r[0].Outcome != "retry" || r[0].Attempt != 1 || r[1].Outcome != "failed" || r[1].Attempt != 2 ||
		r[1].Kind != queue.KindApp || r[1].Error == "" {
		t.Errorf("retry events: %+v", r)
	}
}

// TestInfoWorkerRows pins the per-worker rows of the agent's info: pid,
// state, RSS, jobs run, and the job a busy worker runs now.
func TestInfoWorkerRows(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 2))
	a := f.Agents[0]
	id := submit(t, f, "s1", &queue.Job{ID: "row-slow", Command: "sleep", Payload: json.RawMessage(`{"MS":3000}`)})
	fleettest.Eventually(t, 15*time.Second, func() error {
		for _, w := range a.Info().Workers {
			if w.CurrentJob == id {
				if w.State != "busy" || w.PID <= 0 || w.RSS <= 0 || w.ID == "" || w.StartedAt.IsZero() {
					return fmt.Errorf("row of the busy worker: %+v", w)
				}
				return nil
			}
		}
		return fmt.Errorf("no worker runs %s: %+v", id, a.Info().Workers)
	})
	result(t, f, id)
	fleettest.Eventually(t, 10*time.Second, func() error {
		rows := a.Info().Workers
		if len(rows) != 2 {
			return fmt.Errorf("%d rows, want 2", len(rows))
		}
		jobs := 0
		for _, w := range rows {
			if w.CurrentJob != "" {
				return fmt.Errorf("a worker still runs %s after its result", w.CurrentJob)
			}
			jobs += w.Jobs
		}
		if jobs != 1 {
			return fmt.Errorf("jobs run %d, want 1", jobs)
		}
		return nil
	})
}
