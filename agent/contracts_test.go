package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// jobsInStream is how many jobs FLEET_JOBS holds: on a work-queue stream an
// ack removes the job, so a job still there has not been acked.
func jobsInStream(t *testing.T, topo *queue.Topology) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestAckOnlyAfterResultStored: while the results stream refuses writes, a
// job that ran is never acked: it stays in the jobs stream and comes back,
// again and again. Once results can be stored, it ends with its result and
// only then leaves the stream.
func TestAckOnlyAfterResultStored(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	f := fleettest.StartFleet(t, cfg)
	topo := f.Topology()
	if r := result(t, f, submit(t, f, "", &queue.Job{ID: "warm", Command: "echo", Payload: json.RawMessage(`1`)})); !r.OK {
		t.Fatalf("warm-up job: %+v", r)
	}
	// Its ack follows its stored result.
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := jobsInStream(t, topo); n != 0 {
			return fmt.Errorf("the warm-up job is not acked yet (%d jobs in the stream)", n)
		}
		return nil
	})

	// The results stream is full and refuses anything new.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js := f.Server.JetStream(t)
	info, err := topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := info.Config
	full := open
	full.MaxMsgs, full.Discard = int64(info.State.Msgs), jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Results.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if err := topo.StoreResult(ctx, &queue.Result{ID: "probe", OK: true}); err == nil {
		t.Fatal("the full results stream stored a result; the test proves nothing")
	}

	id := submit(t, f, "", &queue.Job{ID: "held", Command: "echo", Payload: json.RawMessage(`2`), MaxAttempts: queue.MaxAttemptsLimit})
	fleettest.Eventually(t, 60*time.Second, func() error {
		if n := jobsInStream(t, topo); n != 1 {
			t.Fatalf("jobs stream holds %d jobs while the result cannot be stored, want the 1 that ran (it was acked)", n)
		}
		if _, err := topo.GetResult(ctx, id); !errors.Is(err, queue.ErrResultNotFound) {
			t.Fatalf("result of %s while the stream refuses results: %v", id, err)
		}
		if n := len(fleettest.ReadExecLog(t, execLog)[id]); n < 3 {
			return fmt.Errorf("job ran %d times so far", n)
		}
		return nil
	})

	if _, err := js.UpdateStream(ctx, open); err != nil {
		t.Fatal(err)
	}
	r := result(t, f, id)
	if !r.OK || string(r.Result) != "2" || r.Attempt < 3 {
		t.Fatalf("result once the stream takes results again: %+v", r)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := jobsInStream(t, topo); n != 0 {
			return fmt.Errorf("jobs stream still holds %d jobs after the result was stored", n)
		}
		return nil
	})
}

// TestGracefulStopReleases: an agent that stops gracefully deletes its
// leases and its registry entry before Stop returns, rather than leaving
// them to expire.
func TestGracefulStopReleases(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	f.WaitBalanced(t, 30*time.Second)
	a := f.Agents[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	topo := f.Topology()
	leases, err := topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 0 {
		t.Errorf("after a graceful stop %d leases remain, want none: %v", len(leases), leases)
	}
	agents, err := topo.ListAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(agents) != 0 {
		t.Errorf("after a graceful stop the registry still lists %+v", agents)
	}
}

// handoverBound is how long a graceful handover may take after Stop
// returns: the survivor learns of the departure from its registry watch and
// takes the released leases at once. Measured at 20-150 ms (-race, loaded
// machine); without the release it waits for the departed agent's entry to
// expire, 2-3 s (AgentTTL less up to one heartbeat interval), or for the
// leases to expire (LeaseTTL, 6 s).
const handoverBound = time.Second

// TestGracefulStopHandover: after a graceful stop the survivor owns every
// partition far sooner than any TTL would allow.
func TestGracefulStopHandover(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(2, 1))
	f.WaitBalanced(t, 30*time.Second)
	victim, survivor := f.Agents[1], f.Agents[0]
	if len(victim.Partitions()) == 0 {
		t.Fatal("the victim owns no partition; the test proves nothing")
	}
	q := f.Topology().Config
	if handoverBound >= q.AgentTTL/2 || handoverBound >= q.LeaseTTL/2 {
		t.Fatalf("bound %s does not tell a handover from an expiry (AgentTTL %s, LeaseTTL %s)", handoverBound, q.AgentTTL, q.LeaseTTL)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := victim.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	all := make([]int, q.Partitions)
	for i := range all {
		all[i] = i
	}
	var took time.Duration
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := survivor.Partitions(); !slices.Equal(got, all) {
			return fmt.Errorf("survivor owns %v", got)
		}
		took = time.Since(stopped)
		return nil
	})
	t.Logf("graceful handover: the survivor owned every partition %s after Stop returned", took.Round(time.Millisecond))
	if took > handoverBound {
		t.Errorf("handover took %s after a graceful stop, want at most %s", took, handoverBound)
	}
}

// TestLongJobNotRedelivered: a job that runs three times its consumer's
// AckWait is kept alive with InProgress and runs exactly once, on a session
// partition and on the anonymous consumer alike, though a free worker could
// have taken a redelivery at any time. The InProgress goes out every third
// of AckWait; at 4 s a starved agent may miss more than a whole beat (it
// would take 2.7 s of silence to lose the job), where at 2 s the margin was
// 1.3 s.
func TestLongJobNotRedelivered(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 3)
	cfg.Agent.Queue.AckWait = 4 * time.Second
	cfg, execLog := withExecLog(t, cfg)
	f := fleettest.StartFleet(t, cfg)
	if got := f.Topology().Config.AckWait; got != 4*time.Second {
		t.Fatalf("AckWait %s", got)
	}
	payload := json.RawMessage(`{"ms":12000}`)
	ids := []string{
		submit(t, f, "", &queue.Job{ID: "long-any", Command: "sleep", Payload: payload, TimeoutMS: 30000}),
		submit(t, f, "s1", &queue.Job{ID: "long-s1", Command: "sleep", Payload: payload, TimeoutMS: 30000}),
	}
	for _, id := range ids {
		if r := result(t, f, id); !r.OK || r.Attempt != 1 {
			t.Errorf("job %s: %+v, want ok at attempt 1", id, r)
		}
	}
	execs := fleettest.ReadExecLog(t, execLog)
	for _, id := range ids {
		if n := len(execs[id]); n != 1 {
			t.Errorf("job %s ran %d times, want once: %+v", id, n, execs[id])
		}
	}
}

// TestNoConsumeWithoutLease: a partition whose lease another owner holds is
// not consumed, however the assignment falls, until that lease
// is released.
func TestNoConsumeWithoutLease(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	cfg.Server = srv
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	other, err := dispatcher.EnsureClient(ctx, srv.Connect(t), cfg.Agent.Queue)
	if err != nil {
		t.Fatal(err)
	}
	topo := other.Topology()
	const session = "contended"
	p := topo.Config.PartitionOf(session)
	lease, err := topo.AcquireLease(ctx, p, "intruder")
	if err != nil {
		t.Fatal(err)
	}

	f := fleettest.StartFleet(t, cfg)
	a := f.Agents[0]
	want := make([]int, 0, topo.Config.Partitions-1)
	for i := range topo.Config.Partitions {
		if i != p {
			want = append(want, i)
		}
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := a.Partitions(); !slices.Equal(got, want) {
			return fmt.Errorf("agent owns %v, want all but %d", got, p)
		}
		return nil
	})
	id := submit(t, f, session, &queue.Job{ID: "contended-1", Command: "echo", Payload: json.RawMessage(`1`)})
	// For several rebalance rounds and pull waits the job must not run.
	// The intruder keeps its lease alive meanwhile.
	fleettest.Throughout(t, 3*time.Second, 100*time.Millisecond, func() error {
		if err := topo.RenewLease(ctx, lease); err != nil {
			return err
		}
		if slices.Contains(a.Partitions(), p) {
			return fmt.Errorf("the agent took partition %d while %s holds its lease", p, lease.Owner)
		}
		if n := len(fleettest.ReadExecLog(t, execLog)[id]); n != 0 {
			return fmt.Errorf("job %s ran on partition %d while %s holds its lease", id, p, lease.Owner)
		}
		return nil
	})
	if err := topo.ReleaseLease(ctx, lease); err != nil {
		t.Fatal(err)
	}
	if r := result(t, f, id); !r.OK || r.Agent != a.Name() {
		t.Fatalf("after the release: %+v", r)
	}
}

// TestCrashFailoverBeforeLeaseExpiry: when an agent dies (Kill: no release,
// no goodbye), the survivors take its partitions once its registry entry
// expires, long before its leases would. The lease TTL here is twenty
// times the agent TTL, so waiting for the leases cannot pass, and the bound
// below (a quarter of it) leaves a loaded machine five times the 2 s
// expected.
func TestCrashFailoverBeforeLeaseExpiry(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(3, 1)
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Agent.Queue.LeaseTTL = 40 * time.Second
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	victim := f.Agents[2]
	if len(victim.Partitions()) == 0 {
		t.Fatal("the victim owns no partition; the test proves nothing")
	}
	killed := time.Now()
	victim.Kill()
	f.WaitBalanced(t, 60*time.Second)
	took := time.Since(killed)
	t.Logf("agent killed: its partitions moved to the survivors in %s", took.Round(time.Millisecond))
	// Expected: AgentTTL less up to one heartbeat interval, plus the
	// server's expiry lag: about 2 s. The bound leaves five times that, and
	// stays far below the lease TTL.
	if bound := f.Topology().Config.LeaseTTL / 4; took > bound {
		t.Errorf("failover took %s, want at most %s (the dead agent's leases were waited out)", took, bound)
	}
}

// limitRegistry makes the agents bucket refuse any entry over maxMsgSize
// bytes (the server's own expiry markers, empty, still fit), and returns
// what undoes it.
func limitRegistry(ctx context.Context, t *testing.T, f *fleettest.Fleet, maxMsgSize int) (reopen func()) {
	t.Helper()
	js := f.Server.JetStream(t)
	stream, err := js.Stream(ctx, "KV_"+f.Topology().Config.AgentsBucket())
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := info.Config
	narrow := open
	narrow.MaxMsgSize = int32(maxMsgSize)
	if _, err := js.UpdateStream(ctx, narrow); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if _, err := js.UpdateStream(ctx, open); err != nil {
			t.Fatal(err)
		}
	}
}

// TestNoPullWhenHeartbeatsFail: an agent whose heartbeats stop getting
// through may be declared dead, and then the others take its partitions at
// once; so before its entry can expire it stops pulling from them, and it
// pulls again once a heartbeat gets through.
func TestNoPullWhenHeartbeatsFail(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	a := f.Agents[0]
	topo := f.Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The registry refuses every heartbeat from now on: each is bigger than
	// it takes.
	reopen := limitRegistry(ctx, t, f, 16)
	if err := topo.Heartbeat(ctx, &queue.AgentInfo{Name: a.Name()}); err == nil {
		t.Fatal("the full registry took a heartbeat; the test proves nothing")
	}
	refused := time.Now()
	// Past the TTL every heartbeat since the refusal has failed.
	ttl := topo.Config.AgentTTL
	fleettest.Eventually(t, 30*time.Second, func() error {
		if time.Since(refused) < ttl {
			return errors.New("within the TTL")
		}
		return nil
	})
	id := submit(t, f, "s1", &queue.Job{ID: "unbeaten", Command: "echo", Payload: json.RawMessage(`1`)})
	fleettest.Throughout(t, ttl, 50*time.Millisecond, func() error {
		if n := len(fleettest.ReadExecLog(t, execLog)[id]); n != 0 {
			return fmt.Errorf("job %s ran while the agent's heartbeats failed for %s", id, time.Since(refused).Round(time.Millisecond))
		}
		return nil
	})
	reopen()
	if r := result(t, f, id); !r.OK || r.Agent != a.Name() {
		t.Fatalf("after the registry took heartbeats again: %+v", r)
	}
}

// TestStepDownWhenOnlyHeartbeatsFail: an agent whose heartbeats are refused
// while its lease renewals still get through (here its own registry entry
// is too big for the bucket; in a cluster, a registry it cannot reach while
// the leases' stream is fine) is gone in the others' eyes and pulls
// nothing. Alone it keeps its partitions (a registry down for everyone
// looks the same to it). Once another agent heartbeats, it must not keep
// them: the newcomer does not know it, so it could never take them. It
// hands them over, takes none while refused, and takes its share again
// once a heartbeat gets through.
func TestStepDownWhenOnlyHeartbeatsFail(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 128)
	cfg := fleetConfig(1, 1)
	cfg.Agent.Queue.Partitions = 4
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Configure = func(i int, c *agent.Config) {
		c.Name = long
		if i == 2 {
			c.Name = "b"
		}
	}
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	a := f.Agents[0]
	topo := f.Topology()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The registry's largest message from now on: below a's entry even
	// once it lists no partition (each of its two listings of [0,1,2,3]
	// is 24 bytes), above b's (its name is 127 bytes shorter) even with
	// the 54 bytes of header its first write carries.
	var size int
	fleettest.Eventually(t, 30*time.Second, func() error {
		e, err := topo.Agents.Get(ctx, a.Name())
		if err != nil {
			return err
		}
		if size = len(e.Value()); bytes.Count(e.Value(), []byte(`"partitions":[0,1,2,3]`)) != 2 {
			return fmt.Errorf("a's entry does not list its partitions yet: %s", e.Value())
		}
		return nil
	})
	limit := size - 48 - 10
	reopen := limitRegistry(ctx, t, f, limit)
	// a is gone from the registry once its entry expires.
	fleettest.Eventually(t, 30*time.Second, func() error {
		if _, err := topo.Agents.Get(ctx, a.Name()); !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("a's entry: %v", err)
		}
		return nil
	})
	gone := time.Now()
	// Then a writes each lease again (or deletes it): from here on, a lease
	// a merely renewed is alive in a newcomer's eyes.
	before, err := topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		now, err := topo.LeaseOwners(ctx)
		if err != nil {
			return err
		}
		for p, l := range before {
			if n, ok := now[p]; ok && n.Revision == l.Revision {
				return fmt.Errorf("partition %d's lease not written since a's entry expired", p)
			}
		}
		return nil
	})
	// Alone, it cannot tell a registry that refuses it from one that is
	// down for everyone (say, electing a leader): it keeps its partitions,
	// renewing, and pulls nothing.
	all := []int{0, 1, 2, 3}
	fleettest.Throughout(t, 1500*time.Millisecond, 50*time.Millisecond, func() error {
		if got := a.Partitions(); !slices.Equal(got, all) {
			return fmt.Errorf("the lone refused agent holds %v, want %v", got, all)
		}
		return nil
	})
	// An agent that joins heartbeats fine: now the registry works for
	// others, and a hands every partition over to it.
	b := f.AddAgent(t)
	waitOwns(t, b, "the agent that joined", all)
	waitOwns(t, a, "the agent whose heartbeats are refused", nil)
	t.Logf("%s took every partition %s after a's entry expired", b.Name(), time.Since(gone).Round(time.Millisecond))
	for i := range 8 {
		s := fmt.Sprintf("s%d", i)
		id := submit(t, f, s, &queue.Job{ID: "stepped-" + s, Command: "echo", Payload: json.RawMessage(`1`)})
		if r := result(t, f, id); !r.OK || r.Agent != b.Name() {
			t.Fatalf("session %s: %+v, want it served by %s", s, r, b.Name())
		}
	}
	// b stops and gives its partitions up; a takes none of them while its
	// heartbeats are refused (many of its rebalances).
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	if err := b.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	scancel()
	fleettest.Throughout(t, 1500*time.Millisecond, 50*time.Millisecond, func() error {
		if got := a.Partitions(); len(got) != 0 {
			return fmt.Errorf("the refused agent took %v", got)
		}
		return nil
	})

	reopen()
	waitOwns(t, a, "the agent whose heartbeats get through again", all)
}

// TestServerRestartKeepsPartitions: a NATS restart that outlasts the
// agent's claim and the client's request timeout (5 s) hands nothing over:
// a lone agent keeps its partitions, and its sessions their workers.
//   - A renewal sent as the connection dropped times out on the client
//     but is applied once the server is back; the next renewal then finds
//     the lease one revision ahead, written by the agent itself
//     (lane.renew, queue.Topology.ResumeLease). Without that the agent
//     dropped a partition here in 2 runs of 3.
//   - Heartbeats fail and renewals get through for a moment after the
//     reconnect; with no other agent heartbeating the agent does not step
//     down (Agent.stepDownIfRefused).
func TestServerRestartKeepsPartitions(t *testing.T) {
	t.Parallel()
	same := fleettest.Restartable(t)
	first := fleettest.StartServer(t, same)
	cfg := fleetConfig(1, 1)
	cfg.Server = first
	cfg.Agent.Queue.Partitions = 4
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Agent.Queue.LeaseTTL = 40 * time.Second
	cfg.Agent.LeaseRenewInterval = 100 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	a := f.Agents[0]
	all := []int{0, 1, 2, 3}

	first.Shutdown()
	first.WaitForShutdown()
	// Down for longer than the claim (0.9 × AgentTTL) and the client's
	// request timeout: this is the fault itself, not a wait for something.
	down := time.NewTimer(6 * time.Second)
	<-down.C
	restarted := time.Now()
	fleettest.StartServer(t, same)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	// Until the agent has heartbeated through the new server and renewed
	// many times more, it owns every partition at every look.
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var beatBack time.Time
	for beatBack.IsZero() || time.Since(beatBack) < time.Second {
		if time.Since(restarted) > 60*time.Second {
			t.Fatal("the agent did not heartbeat through the new server within 60s")
		}
		<-tick.C
		if got := a.Partitions(); !slices.Equal(got, all) {
			t.Fatalf("%s after the restart the agent owns %v, want %v: it handed partitions over", time.Since(restarted).Round(time.Millisecond), got, all)
		}
		if !beatBack.IsZero() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		infos, err := f.Topology().ListAgents(ctx)
		cancel()
		if err == nil && len(infos) == 1 && infos[0].UpdatedAt.After(restarted) {
			beatBack = time.Now()
		}
	}
}
