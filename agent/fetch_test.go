package agent_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestLongPollLosesNothing pins the long poll of an idle partition: a job
// that arrives just as a pull request expires reaches a worker on its first
// delivery, and its session's later jobs do not overtake it. The client used
// to end such a pull on a deadline of its own, a little after the server's
// expiry; a message the server sent in that gap was dropped unacked and came
// back only after AckWait, behind the later jobs of its session. Jobs here
// trickle in one at a time (so every pull is a long poll) at random gaps
// around a pull's length, kept short so that thousands of pulls end while
// the test runs.
func TestLongPollLosesNothing(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 2))
	cfg.Agent.FetchWait = 40 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 14))
	const sessions, jobs = 8, 400
	var ids []string
	next := make([]int, sessions)
	for range jobs {
		s := rng.IntN(sessions)
		id := fmt.Sprintf("lp-s%d-%03d", s, next[s])
		next[s]++
		if _, err := f.Client.Submit(ctx, fmt.Sprintf("lp%d", s), &queue.Job{ID: id, Command: "echo"}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		// Gaps of 0-60 ms: most land in a pull, some at its very end.
		// Not synchronisation: the test waits for every result below.
		time.Sleep(time.Duration(rng.IntN(60_000)) * time.Microsecond)
	}
	redelivered := 0
	for _, id := range ids {
		res, err := f.Client.Result(ctx, id, nil)
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if !res.OK {
			t.Fatalf("job %s: %+v", id, res.Error)
		}
		if res.Attempt != 1 {
			redelivered++
			t.Errorf("job %s ran on delivery %d, started %v after it was enqueued: an earlier delivery was lost",
				id, res.Attempt, res.StartedAt.Sub(res.EnqueuedAt).Round(time.Millisecond))
		}
	}
	execs := fleettest.ReadExecLog(t, execLog)
	last := map[string]int{}
	for _, id := range ids {
		es := execs[id]
		if len(es) != 1 {
			t.Fatalf("job %s ran %d times", id, len(es))
		}
		if prev, ok := last[es[0].Session]; ok && es[0].Line < prev {
			t.Errorf("job %s of session %s ran before an earlier job of its session", id, es[0].Session)
		}
		last[es[0].Session] = es[0].Line
	}
	t.Logf("%d jobs over %d sessions, %d redelivered", jobs, sessions, redelivered)
}
