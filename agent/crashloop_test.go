package agent_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/queue"
)

// TestCrashLoopSparesJobs: workers that exit right after their ready frame
// are a crash loop, as if they died before it: the pool backs off and
// reports Degraded, and the jobs wait for a worker that works instead of
// spending their attempts on one generation after another. Only the first
// generation can draw jobs (later ones answer a ping first), and a call the
// dead worker never read is not held against the job by the poison guard,
// so no job is exhausted or poisoned however long the loop lasts.
func TestCrashLoopSparesJobs(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Pool.Worker.Command, cfg.Agent.Pool.Worker.Env = fleettest.HelperWorker(testworker.StartReadyExit)
	cfg.Agent.Pool.BackoffMin = 20 * time.Millisecond
	cfg.Agent.Pool.BackoffMax = 100 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	a := f.Agents[0]
	for i := range 5 {
		submit(t, f, "", &queue.Job{ID: fmt.Sprintf("spared-%d", i), Command: "echo", Payload: json.RawMessage(`1`), MaxAttempts: 3})
	}
	// Many generations fail while the jobs wait.
	fleettest.Eventually(t, 60*time.Second, func() error {
		st := a.Pool().Stats()
		if !st.Degraded || st.StartFailures < 20 {
			return fmt.Errorf("pool not yet through 20 failed starts: %+v", st)
		}
		return nil
	})
	c := a.Counters()
	t.Logf("after %d failed starts: %+v", a.Pool().Stats().StartFailures, c)
	if c.Exhausted != 0 || c.Succeeded != 0 || c.AppFailed != 0 {
		t.Errorf("counters %+v: a job ended while no worker could run it", c)
	}
	if c.Retried > 2 {
		t.Errorf("%d attempts charged, want at most the first generation's 2 workers' worth", c.Retried)
	}
}
