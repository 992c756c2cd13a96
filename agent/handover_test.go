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
	"github.com/procfleet/procfleet/dispatcher"
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
	waitOwns(t, old, "old agent", []int{0})
	const session = "handed"
	long := startLong(t, f, execLog, session, run, 60*time.Second)
	next := submit(t, f, session, &queue.Job{ID: "next", Command: "echo", Payload: json.RawMessage(`1`)})
	newcomer := f.AddAgent(t)
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := old.Partitions(); len(got) != 0 {
			return fmt.Errorf("old agent still owns %v", got)
		}
		return nil
	})

	checkLongThenNext(t, f, execLog, long, next, "b-old")
	waitOwns(t, newcomer, "newcomer, after the handover,", []int{0})
}

// TestLeaseLostKeepsJobAlive: an agent that finds its lease lost (here
// deleted under it) while a job of that partition runs for longer than
// AckWait keeps that job alive while it drains: the agent that takes the
// partition next does not get the job redelivered and run a second time.
func TestLeaseLostKeepsJobAlive(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	cfg := fleetConfig(2, 2)
	cfg.Server = srv
	cfg.Agent.Queue.Partitions = 2
	cfg.Agent.Queue.AckWait = 4 * time.Second
	cfg, execLog := withExecLog(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	other, err := dispatcher.EnsureClient(ctx, srv.Connect(t), cfg.Agent.Queue)
	if err != nil {
		t.Fatal(err)
	}
	topo := other.Topology()
	// An intruder, not an agent, holds partition 1: the agent without a
	// partition stays under its quota and takes partition 0 once it is an
	// orphan.
	intruder, err := topo.AcquireLease(ctx, 1, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	renewed := make(chan struct{})
	rctx, stopRenew := context.WithCancel(ctx)
	go func() {
		defer close(renewed)
		for sleepFor(rctx, time.Second) {
			if err := topo.RenewLease(rctx, intruder); err != nil && rctx.Err() == nil {
				t.Errorf("intruder's renewal: %v", err)
				return
			}
		}
	}()
	defer func() { stopRenew(); <-renewed }()

	f := fleettest.StartFleet(t, cfg)
	var holder, taker *agent.Agent
	fleettest.Eventually(t, 30*time.Second, func() error {
		for i, a := range f.Agents {
			if slices.Equal(a.Partitions(), []int{0}) {
				holder, taker = a, f.Agents[1-i]
				return nil
			}
		}
		return errors.New("no agent owns partition 0")
	})
	session := ""
	for i := 0; session == ""; i++ {
		if s := fmt.Sprintf("s%d", i); topo.Config.PartitionOf(s) == 0 {
			session = s
		}
	}
	const run = 14 * time.Second
	long := startLong(t, f, execLog, session, run, 60*time.Second)
	started := time.Now()
	leases, err := topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if l := leases[0]; l.Owner != holder.Name() {
		t.Fatalf("partition 0 leased to %q, want %s", l.Owner, holder.Name())
	}
	l := leases[0]
	if err := topo.ReleaseLease(ctx, &l); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		if !slices.Equal(taker.Partitions(), []int{0}) {
			return fmt.Errorf("%s owns %v", taker.Name(), taker.Partitions())
		}
		return nil
	})
	if took := time.Since(started); took > run/2 {
		t.Fatalf("%s took partition 0 %s after the long job started; the test proves nothing", taker.Name(), took)
	}
	if r := result(t, f, long); !r.OK || r.Attempt != 1 || r.Agent != holder.Name() {
		t.Errorf("long job: %+v, want ok at attempt 1 on %s", r, holder.Name())
	}
	checkOnce(t, execLog, []string{long})
}

func sleepFor(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// TestGracefulStopKeepsSessionOrder: an agent stopping gracefully while one
// of its session's jobs runs for longer than AgentTTL and LeaseTTL keeps its
// registry entry and its leases until that job has ended: the survivor runs
// the session's next job only after it, not once the stopping agent's entry
// or leases would have expired.
func TestGracefulStopKeepsSessionOrder(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(2, 2)
	cfg.Agent.Queue.Partitions = 2
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	q := f.Topology().Config
	const run = 20 * time.Second
	if run < 2*q.AgentTTL || run < 3*q.LeaseTTL {
		t.Fatalf("a %s job does not outlast AgentTTL %s and LeaseTTL %s", run, q.AgentTTL, q.LeaseTTL)
	}
	victim := f.Agents[0]
	p := victim.Partitions()[0]
	session := ""
	for i := 0; session == ""; i++ {
		if s := fmt.Sprintf("s%d", i); q.PartitionOf(s) == p {
			session = s
		}
	}
	submitted := time.Now()
	long := startLong(t, f, execLog, session, run, 60*time.Second)
	next := submit(t, f, session, &queue.Job{ID: "next", Command: "echo", Payload: json.RawMessage(`1`)})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stopping := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- victim.Stop(ctx) }()
	// Well past a LeaseTTL into the stop, the job still runs, and the lease
	// is still the stopping agent's.
	fleettest.Eventually(t, 60*time.Second, func() error {
		if wait := 3 * q.LeaseTTL / 2; time.Since(stopping) < wait {
			return fmt.Errorf("%s into the stop, want %s", time.Since(stopping).Round(time.Millisecond), wait)
		}
		return nil
	})
	leases, err := f.Topology().LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(submitted) >= run {
		t.Fatalf("the long job may have ended %s after it was submitted; the test proves nothing", time.Since(submitted))
	}
	if l, ok := leases[p]; !ok || l.Owner != victim.Name() {
		t.Errorf("%s into the stop, while its job still runs, partition %d is leased to %q, want the stopping %s",
			time.Since(stopping).Round(time.Millisecond), p, l.Owner, victim.Name())
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	checkLongThenNext(t, f, execLog, long, next, victim.Name())
}

// TestStopBoundsHandoverDrain: a graceful stop whose context ends while a
// partition handed over earlier still drains a long job cancels that job
// (it is naked and runs again elsewhere) and returns, as it does for the
// partitions it still owns, rather than waiting for the job to end.
func TestStopBoundsHandoverDrain(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Queue.Partitions = 1
	cfg.Configure = func(i int, c *agent.Config) {
		c.Name = map[int]string{1: "b-old", 2: "a-new"}[i]
	}
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	old := f.Agents[0]
	waitOwns(t, old, "old agent", []int{0})
	const run, grace = 20 * time.Second, 2 * time.Second
	long := startLong(t, f, execLog, "handed", run, 120*time.Second)
	f.AddAgent(t)
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := old.Partitions(); len(got) != 0 {
			return fmt.Errorf("old agent still owns %v", got)
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	began := time.Now()
	// The context ends before the workers are stopped too: an error
	// saying so is expected.
	if err := old.Stop(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	// Five times the grace, and still well short of the job's run.
	if took := time.Since(began); took > 5*grace {
		t.Errorf("Stop with a %s context took %s: it waited for the handed-over job", grace, took)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 2*run)
	defer rcancel()
	if r, err := f.Client.Result(rctx, long, nil); err != nil || !r.OK || r.Agent != "a-new" {
		t.Errorf("long job: %+v (%v), want ok on a-new after the stop canceled it", r, err)
	}
}

// startLong submits a session's job "long" that sleeps for run (with the
// given timeout) and waits until a worker has started it, once.
func startLong(t *testing.T, f *fleettest.Fleet, execLog, session string, run, timeout time.Duration) string {
	t.Helper()
	id := submit(t, f, session, &queue.Job{ID: "long", Command: "sleep",
		Payload: json.RawMessage(fmt.Sprintf(`{"ms":%d}`, run.Milliseconds())), TimeoutMS: timeout.Milliseconds()})
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := len(fleettest.ReadExecLog(t, execLog)[id]); n != 1 {
			return fmt.Errorf("long job started %d times", n)
		}
		return nil
	})
	return id
}

// waitOwns waits until agent a (who, in a failure) holds exactly the
// partitions want.
func waitOwns(t *testing.T, a *agent.Agent, who string, want []int) {
	t.Helper()
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := a.Partitions(); !slices.Equal(got, want) {
			return fmt.Errorf("%s owns %v, want %v", who, got, want)
		}
		return nil
	})
}

// waitDelivered waits until partition 0's consumer has n jobs delivered and
// not yet acked.
func waitDelivered(t *testing.T, f *fleettest.Fleet, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cons, err := f.Topology().PartitionConsumer(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumAckPending != n {
			return fmt.Errorf("%d jobs delivered and pending, want %d", info.NumAckPending, n)
		}
		return nil
	})
}

// checkLongThenNext checks a session's long job and the job after it: the
// long one ran once, ok, at attempt 1 on agent longAgent; the next one ran
// once, ok, and only after the long one had ended.
func checkLongThenNext(t *testing.T, f *fleettest.Fleet, execLog, long, next, longAgent string) {
	t.Helper()
	rLong, rNext := result(t, f, long), result(t, f, next)
	if !rLong.OK || rLong.Attempt != 1 || rLong.Agent != longAgent {
		t.Errorf("long job: %+v, want ok at attempt 1 on %s", rLong, longAgent)
	}
	if !rNext.OK {
		t.Errorf("next job: %+v, want ok", rNext)
	}
	if rNext.StartedAt.Before(rLong.FinishedAt) {
		t.Errorf("the session's next job started on %s at %s, before the long one ended at %s on %s",
			rNext.Agent, rNext.StartedAt.Format(time.StampMilli), rLong.FinishedAt.Format(time.StampMilli), rLong.Agent)
	}
	checkOnce(t, execLog, []string{long, next})
}
