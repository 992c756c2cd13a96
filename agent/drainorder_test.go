package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestDrainKeepsSessionOrder: a join moves a partition while a long job of
// a session runs and ten more of that session are held behind it. The
// draining agent hands the held jobs back in their order (the server
// redelivers naked messages in the order they were naked), so the next
// owner runs them in submission order: a join is not a fault, and FIFO
// holds across it. Handed back all at once by their own goroutines, they
// were redelivered in whatever order the naks happened to go out.
func TestDrainKeepsSessionOrder(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Queue.Partitions = 1
	cfg.Agent.Capacity = 16 // room to hold all ten behind the long job
	names := map[int]string{1: "b-old", 2: "a-new"}
	cfg.Configure = func(i int, c *agent.Config) { c.Name = names[i] }
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	waitOwns(t, f.Agents[0], "old agent", []int{0})
	const session, held = "ordered", 10
	longID := startLong(t, f, execLog, session, 8*time.Second, 60*time.Second)
	ids := make([]string, held)
	for i := range ids {
		ids[i] = submit(t, f, session, &queue.Job{ID: fmt.Sprintf("held-%02d", i), Command: "echo", Payload: json.RawMessage(`1`)})
	}
	waitDelivered(t, f, held+1)
	joined := time.Now()
	f.AddAgent(t)
	if r := result(t, f, longID); !r.OK || r.Agent != "b-old" || !r.FinishedAt.After(joined) {
		t.Fatalf("long job %+v: want ok on b-old, ending after the join; the test proves nothing otherwise", r)
	}
	for _, id := range ids {
		if r := result(t, f, id); !r.OK || r.Agent != "a-new" {
			t.Fatalf("held job %s: %+v, want ok on a-new", id, r)
		}
	}
	execs := fleettest.ReadExecLog(t, execLog)
	var order []string
	for _, id := range ids {
		if len(execs[id]) != 1 {
			t.Fatalf("job %s ran %d times", id, len(execs[id]))
		}
	}
	slices.SortFunc(ids, func(a, b string) int { return execs[a][0].Line - execs[b][0].Line })
	order = append(order, ids...)
	if !slices.IsSorted(order) {
		t.Fatalf("the held jobs ran on the next owner in the order %v, want submission order", order)
	}
}

// TestDrainDeadlineHandsBackInOrder: a graceful stop runs out of time while
// a session's job runs and the session's next job waits behind it. The cut
// job is the agent's doing, not the job's: it is handed back at once and
// uncharged, before the next one, so the next owner runs the two in their
// order, and a job with max_attempts 1 is not dead-lettered for the stop.
// (Naked as a failure, with a retry delay and an attempt charged, the cut
// job came back after the next one, or was exhausted.)
func TestDrainDeadlineHandsBackInOrder(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Queue.Partitions = 1
	names := map[int]string{1: "b-old", 2: "a-new"}
	cfg.Configure = func(i int, c *agent.Config) { c.Name = names[i] }
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	old := f.Agents[0]
	waitOwns(t, old, "old agent", []int{0})
	const session = "cut"
	long := submit(t, f, session, &queue.Job{ID: "long", Command: "sleep", Payload: json.RawMessage(`{"ms":5000}`), MaxAttempts: 1})
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := len(fleettest.ReadExecLog(t, execLog)[long]); n != 1 {
			return fmt.Errorf("long job started %d times", n)
		}
		return nil
	})
	next := submit(t, f, session, &queue.Job{ID: "next", Command: "echo", Payload: json.RawMessage(`2`), MaxAttempts: 1})
	waitDelivered(t, f, 2)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := old.Stop(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	f.AddAgent(t) // a-new, the next owner
	rLong, rNext := result(t, f, long), result(t, f, next)
	if !rLong.OK || rLong.Agent != "a-new" || rLong.Attempt != 1 {
		t.Fatalf("cut job: %+v (error %+v), want ok on a-new, attempt 1", rLong, rLong.Error)
	}
	if !rNext.OK || rNext.Agent != "a-new" {
		t.Fatalf("next job: %+v, want ok on a-new", rNext)
	}
	execs := fleettest.ReadExecLog(t, execLog)
	if len(execs[long]) != 2 || len(execs[next]) != 1 || execs[next][0].Line < execs[long][1].Line {
		t.Fatalf("runs: long %+v, next %+v; want next to start after long's second start", execs[long], execs[next])
	}
}
