package agent_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// drainHeldJob runs a session's long job on agent "b-old", the owner of
// the only partition, submits a second job of that session with
// max_attempts 1 (held behind the long one: delivered, waiting in the
// session's line), then drains the held job while the long one still runs:
// by a join (a newcomer "a-new" sorts first, so with one partition its
// quota is 1 and b-old's 0) or, with stop, by a graceful stop of b-old
// (then "c-other", idle from the start, takes the partition). It returns
// the held job's result and the long one's.
func drainHeldJob(t *testing.T, maxDeliver int, stop bool) (held, long *queue.Result, execLog string) {
	cfg := fleetConfig(1, 2)
	cfg.Agent.Queue.Partitions = 1
	cfg.Agent.Queue.MaxDeliver = maxDeliver
	names := map[int]string{1: "b-old", 2: "a-new"}
	if stop {
		cfg.Agents = 2
		names = map[int]string{1: "b-old", 2: "c-other"}
	}
	cfg.Configure = func(i int, c *agent.Config) { c.Name = names[i] }
	cfg, execLog = withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	old := f.Agents[0]
	waitOwns(t, old, "old agent", []int{0})
	const run = 8 * time.Second
	const session = "drained"
	longID := startLong(t, f, execLog, session, run, 60*time.Second)
	heldID := submit(t, f, session, &queue.Job{ID: "held", Command: "echo", Payload: json.RawMessage(`1`), MaxAttempts: 1})
	// Both jobs delivered to the old agent: the second is held in line.
	waitDelivered(t, f, 2)
	drained := time.Now()
	if stop {
		sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer scancel()
		if err := old.Stop(sctx); err != nil {
			t.Fatal(err)
		}
	} else {
		f.AddAgent(t)
	}
	held, long = result(t, f, heldID), result(t, f, longID)
	if !long.OK || long.Agent != "b-old" {
		t.Fatalf("long job: %+v, want ok on b-old", long)
	}
	if !long.FinishedAt.After(drained) {
		t.Fatalf("the long job ended at %s, before the drain began at %s: nothing was drained; the test proves nothing",
			long.FinishedAt.Format(time.StampMilli), drained.Format(time.StampMilli))
	}
	return held, long, execLog
}

// TestDrainedJobNotCharged: a delivery a drain hands back before the job
// reached a worker is not charged against max_attempts: a job with
// max_attempts 1, held behind a long job of its session when a join moved
// its partition (or a graceful stop ended its agent), runs once on the
// next owner and ends ok at attempt 1, instead of being dead-lettered
// unrun as exhausted.
func TestDrainedJobNotCharged(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, next string
		stop       bool
	}{{"join", "a-new", false}, {"stop", "c-other", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			held, _, execLog := drainHeldJob(t, 0, tc.stop)
			if !held.OK || held.Attempt != 1 || held.Agent != tc.next {
				t.Errorf("held job: %+v (error %+v), want ok at attempt 1 on %s (delivered twice, charged once)", held, held.Error, tc.next)
			}
			checkOnce(t, execLog, []string{"held", "long"})
		})
	}
}

// TestDrainOnLastDeliveryEnds: the consumer's MaxDeliver stays a hard stop
// whatever is free: a held job drained on its last delivery (MaxDeliver 1)
// is ended by the draining agent as exhausted, never run, rather than
// naked into a stream that would never deliver it again.
func TestDrainOnLastDeliveryEnds(t *testing.T) {
	t.Parallel()
	held, _, execLog := drainHeldJob(t, 1, false)
	if held.OK || held.Error == nil || held.Error.Kind != queue.KindExhausted || held.Agent != "b-old" ||
		!strings.Contains(held.Error.Message, "MaxDeliver") {
		t.Errorf("held job: %+v (error %+v), want exhausted by b-old at the consumer's MaxDeliver", held, held.Error)
	}
	if n := len(fleettest.ReadExecLog(t, execLog)["held"]); n != 0 {
		t.Errorf("held job ran %d times, want never", n)
	}
}

// TestRetryOnLastDeliveryEnds: a job whose attempt fails on its consumer's
// last delivery (MaxDeliver below max_attempts) is ended there by the agent
// as exhausted, rather than naked into a stream that would never deliver it
// again.
func TestRetryOnLastDeliveryEnds(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 1)
	cfg.Agent.Queue.MaxDeliver = 2
	f := fleettest.StartFleet(t, cfg)
	id := submit(t, f, "", &queue.Job{ID: "retrying", Command: "retry", MaxAttempts: 5})
	r := result(t, f, id)
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindExhausted || r.Attempt != 2 ||
		!strings.Contains(r.Error.Message, "MaxDeliver") {
		t.Errorf("result: %+v (error %+v), want exhausted at attempt 2, the consumer's MaxDeliver", r, r.Error)
	}
}
