package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestPausedAgentHandsBackHeldJobs: an agent cut off from NATS without
// noticing (a stalled network, or the agent paused with SIGSTOP) loses its
// claim on its partition once its registry entry would have expired, and
// another agent takes the partition. The held jobs of the session it was
// running must not start on it afterwards, beside the new owner: each is
// handed back and runs once, on the new owner. (This is a fault, not a
// drain: the hand-back's free record cannot be written while the agent is
// cut off, so the redelivery may be charged, and a pull request the stalled
// network held back may reach the server late, so the session's order is
// not asserted: FIFO holds until a fault.)
func TestPausedAgentHandsBackHeldJobs(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	cfg.Agent.Queue.Partitions = 1
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Agent.Queue.AckWait = 20 * time.Second
	cfg.Agent.Capacity = 8
	cfg.Configure = func(_ int, c *agent.Config) { c.Name = "b-other" }
	f := fleettest.StartFleet(t, cfg)
	other := f.Agents[0]
	waitOwns(t, other, "b-other", []int{0})

	// The paused agent reaches the server through a proxy; it sorts first,
	// so the partition moves to it.
	proxy := fleettest.StartProxy(t, strings.TrimPrefix(f.Server.URL, "nats://"))
	nc, err := nats.Connect(proxy.URL, nats.Name("a-paused"), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	zcfg := cfg.Agent
	zcfg.Name = "a-paused"
	zcfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	z, err := agent.New(nc, zcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := z.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the proxy's own cleanup closes it
		proxy.Resume()
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := z.Stop(sctx); err != nil {
			t.Errorf("stop a-paused: %v", err)
		}
		nc.Close()
	})
	waitOwns(t, z, "a-paused", []int{0})
	waitOwns(t, other, "b-other", nil)
	pausedPID := z.Pool().Stats().Workers[0].PID

	// A long job runs on the paused agent; the session's next jobs are
	// held behind it.
	ids := []string{submit(t, f, "zs", &queue.Job{ID: "long", Command: "sleep",
		Payload: json.RawMessage(`{"ms":6000}`), TimeoutMS: 60_000})}
	for i := 1; i <= 3; i++ {
		ids = append(ids, submit(t, f, "zs", &queue.Job{ID: fmt.Sprintf("next-%d", i), Command: "echo", Payload: json.RawMessage(`1`)}))
	}
	waitDelivered(t, f, len(ids))
	fleettest.Eventually(t, 30*time.Second, func() error {
		if n := len(fleettest.ReadExecLog(t, execLog)[ids[0]]); n != 1 {
			return fmt.Errorf("long job started %d times", n)
		}
		return nil
	})
	proxy.Pause()
	waitOwns(t, other, "b-other", []int{0})
	// The long job ends on the paused agent; its next jobs are handed back
	// instead of run.
	fleettest.Eventually(t, 60*time.Second, func() error {
		if c := z.Counters(); c.Requeued < 3 {
			return fmt.Errorf("a-paused handed back %d of the 3 held jobs (counters %+v)", c.Requeued, c)
		}
		return nil
	})
	// The paused agent now crashes, as a process does, connection and
	// all: had it resumed, it would be a member again, and (it sorts
	// first) get the partition back by a rebalance.
	z.Kill()
	nc.Close()
	proxy.Resume()
	for _, id := range ids {
		// A pull request the stalled network held back reaches the server
		// late and may be served to the crashed agent: that job comes back
		// after the ack wait.
		rctx, cancel := context.WithTimeout(context.Background(), 3*cfg.Agent.Queue.AckWait)
		r, err := f.Client.Result(rctx, id, nil)
		cancel()
		if err != nil {
			t.Fatalf("result %s: %v", id, err)
		}
		if !r.OK {
			t.Errorf("job %s: %+v (error %+v)", id, r, r.Error)
		}
	}
	execs := fleettest.ReadExecLog(t, execLog)
	for _, id := range ids[1:] {
		runs := execs[id]
		if len(runs) != 1 {
			t.Errorf("job %s ran %d times, want once: %+v", id, len(runs), runs)
			continue
		}
		if runs[0].PID == pausedPID {
			t.Errorf("job %s ran on the paused agent's worker after its claim lapsed", id)
		}
	}
}
