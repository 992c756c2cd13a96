package agent_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestHandoverWaitsForLongJob: a partition an agent hands over (a join
// lowered its quota) while one of its session's jobs runs for longer than
// both AckWait and LeaseTTL stays with it until that job ends: the job is
// kept alive (no redelivery, so it runs once) and the lease is kept (so the
// newcomer neither takes the partition nor runs the session's next job
// before the long one has finished: FIFO holds across the handover).
func TestHandoverWaitsForLongJob(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Queue.Partitions = 1
	cfg.Agent.Queue.AckWait = 4 * time.Second
	// "a-new" sorts first, so with one partition and two agents its quota
	// is 1 and the old agent's 0: the join moves the partition.
	cfg.Configure = func(i int, c *agent.Config) {
		c.Name = map[int]string{1: "b-old", 2: "a-new"}[i]
	}
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	q := f.Topology().Config
	const run = 14 * time.Second
	if run < 3*q.AckWait || run < 2*q.LeaseTTL {
		t.Fatalf("a %s job does not outlast AckWait %s and LeaseTTL %s", run, q.AckWait, q.LeaseTTL)
	}
	old := f.Agents[0]
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := old.Partitions(); !slices.Equal(got, []int{0}) {
			return fmt.Errorf("old agent owns %v", got)
		}
		return nil
	})
	const session = "handed"
	long := submit(t, f, session, &queue.Job{ID: "long", Command: "sleep",
		Payload: json.RawMessage(fmt.Sprintf(`{"ms":%d}`, run.Milliseconds())), TimeoutMS: 60000})
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := len(fleettest.ReadExecLog(t, execLog)[long]); n != 1 {
			return fmt.Errorf("long job started %d times", n)
		}
		return nil
	})
	next := submit(t, f, session, &queue.Job{ID: "next", Command: "echo", Payload: json.RawMessage(`1`)})
	newcomer := f.AddAgent(t)
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := old.Partitions(); len(got) != 0 {
			return fmt.Errorf("old agent still owns %v", got)
		}
		return nil
	})

	rLong, rNext := result(t, f, long), result(t, f, next)
	if !rLong.OK || rLong.Attempt != 1 || rLong.Agent != "b-old" {
		t.Errorf("long job: %+v, want ok at attempt 1 on b-old", rLong)
	}
	if !rNext.OK {
		t.Errorf("next job: %+v, want ok", rNext)
	}
	if rNext.StartedAt.Before(rLong.FinishedAt) {
		t.Errorf("the session's next job started on %s at %s, before the long one ended at %s on %s",
			rNext.Agent, rNext.StartedAt.Format(time.StampMilli), rLong.FinishedAt.Format(time.StampMilli), rLong.Agent)
	}
	checkOnce(t, execLog, []string{long, next})
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := newcomer.Partitions(); !slices.Equal(got, []int{0}) {
			return fmt.Errorf("newcomer owns %v after the handover", got)
		}
		return nil
	})
}
