package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestOutageLeavesHeldJobsUnrun: an agent that cannot reach NATS starts
// none of the jobs it holds, since it could neither store their results
// nor keep their messages alive, and the server delivers them again once
// their ack wait has passed. Here the server stays away past the ack wait:
// every held job of the session is left unrun (none starts while the
// server is away), and once the server is back each runs exactly once, in
// the session's order, at attempt 1 (the delivery left unrun is free, so
// max_attempts 1 does not dead-letter them). Only a job whose call had
// already begun when the server went may run twice.
func TestOutageLeavesHeldJobsUnrun(t *testing.T) {
	t.Parallel()
	same := fleettest.Restartable(t)
	srv := fleettest.StartServer(t, same)
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	cfg.Server = srv
	cfg.Agent.Queue.Partitions = 1
	cfg.Agent.Queue.AckWait = 2 * time.Second
	cfg.Agent.Capacity = 8
	f := fleettest.StartFleet(t, cfg)
	stopAgentsFirst(t, f)
	waitOwns(t, f.Agents[0], "the agent", []int{0})

	const n = 6
	ids := make([]string, n)
	for i := range ids {
		ids[i] = submit(t, f, "outage", &queue.Job{ID: fmt.Sprintf("job-%d", i), Command: "sleep",
			Payload: json.RawMessage(`{"ms":300}`), TimeoutMS: 60_000, MaxAttempts: 1})
	}
	waitDelivered(t, f, n)
	srv.Shutdown()
	srv.WaitForShutdown()

	// The jobs not started are given up once their ack wait has passed,
	// and none starts meanwhile.
	a := f.Agents[0]
	var began int
	fleettest.Eventually(t, 60*time.Second, func() error {
		left := int(a.Counters().LeftUnrun)
		began = len(fleettest.ReadExecLog(t, execLog))
		if left == 0 || left+began != n {
			return fmt.Errorf("%d jobs left unrun and %d started, want %d together (and at least one left unrun)", left, began, n)
		}
		return nil
	})
	t.Logf("server away: %d job(s) had started, %d left unrun", began, n-began)

	fleettest.StartServer(t, same)
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		r, err := f.Client.Result(ctx, id, nil)
		cancel()
		if err != nil {
			t.Fatalf("result %s: %v", id, err)
		}
		if !r.OK {
			t.Errorf("job %s: %+v (error %+v), want ok", id, r, r.Error)
		}
	}
	execs := fleettest.ReadExecLog(t, execLog)
	for i, id := range ids {
		runs := execs[id]
		switch {
		case i < began && (len(runs) < 1 || len(runs) > 2):
			t.Errorf("job %s, started before the outage, ran %d times: %+v", id, len(runs), runs)
		case i >= began && len(runs) != 1:
			t.Errorf("job %s, held through the outage, ran %d times, want once: %+v", id, len(runs), runs)
		case i >= began && runs[0].Attempt != 1:
			t.Errorf("job %s ran at attempt %d, want 1 (the delivery left unrun is free)", id, runs[0].Attempt)
		}
		if i > 0 && len(runs) > 0 && len(execs[ids[i-1]]) > 0 && runs[0].Line < execs[ids[i-1]][0].Line {
			t.Errorf("job %s first ran before job %s, out of the session's order", id, ids[i-1])
		}
	}
}
