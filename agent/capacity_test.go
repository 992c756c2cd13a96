package agent_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestAdaptiveCapacity: with the default Capacity an agent holds more jobs
// while its jobs are short, and exactly twice its pool size ("pull only
// what you can run soon") while they run 25ms or longer.
func TestAdaptiveCapacity(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		job     func(i int) *queue.Job
		long    bool
		jobs    int
		timeout time.Duration
	}{
		{"short", func(int) *queue.Job { return &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)} }, false, 60, time.Minute},
		{"long", func(int) *queue.Job {
			return &queue.Job{Command: "sleep", Payload: json.RawMessage(`{"ms":40}`)}
		}, true, 16, 2 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const pool = 2
			f := fleettest.StartFleet(t, fleetConfig(1, pool))
			f.WaitBalanced(t, 20*time.Second)
			a := f.Agents[0]
			if c := a.Info().Capacity; c != 2*pool {
				t.Fatalf("capacity before any job: %d, want %d", c, 2*pool)
			}
			col := collect(t, f)
			var ids []string
			maxHeld := 0
			for i := range tc.jobs {
				j := tc.job(i)
				j.ID = fmt.Sprintf("%s-%d", tc.name, i)
				ids = append(ids, submit(t, f, "", j))
			}
			fleettest.Eventually(t, tc.timeout, func() error {
				maxHeld = max(maxHeld, a.Info().Held)
				if n := col.Count(); n < len(ids) {
					return fmt.Errorf("%d of %d results", n, len(ids))
				}
				return nil
			})
			got := a.Info().Capacity
			if tc.long {
				if got != 2*pool {
					t.Errorf("capacity after jobs of 40ms: %d, want %d (2 x pool)", got, 2*pool)
				}
				// The gate lets each pull loop overshoot by one job
				// (gate.go); anonymous long jobs are taken only for a
				// free worker.
				if maxHeld > 2*pool+1 {
					t.Errorf("held up to %d jobs of 40ms, want at most %d", maxHeld, 2*pool+1)
				}
			} else if got <= 2*pool || got > 32 {
				t.Errorf("capacity after short jobs: %d, want above %d and at most 32", got, 2*pool)
			}
			for _, id := range ids {
				if r, _, _ := col.Result(id); r == nil || !r.OK {
					t.Errorf("job %s: %+v", id, r)
				}
			}
		})
	}
}
