package agent_test

import (
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestRestLoad measures what a settled, idle fleet costs the NATS server:
// three agents holding the default 64 partitions, no jobs. Failure
// detection must not be bought with load at rest, so the rate is bounded.
func TestRestLoad(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 3}
	cfg.Agent.Queue = queue.Config{}
	cfg.Agent.Pool.Size = 1
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 60*time.Second)

	v0, err := f.Server.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// The window is what is measured, not a synchronisation.
	time.Sleep(5 * time.Second)
	v1, err := f.Server.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	in := float64(v1.InMsgs-v0.InMsgs) / secs
	out := float64(v1.OutMsgs-v0.OutMsgs) / secs
	t.Logf("at rest, 3 agents, 64 partitions: %.1f msgs/s into the server, %.1f msgs/s out", in, out)

	// What the design costs: one long poll per consumer per FetchWait (a
	// partition each, plus each agent's anonymous one), a renewal per lease
	// every third of LeaseTTL, a heartbeat per agent every third of
	// AgentTTL. Watching the registry adds nothing but the relayed
	// heartbeats (messages out). Timers drive all of it, so a loaded
	// machine can only lower the rate.
	q := f.Topology().Config
	budget := float64(q.Partitions+3)/time.Second.Seconds() +
		float64(q.Partitions)/(q.LeaseTTL/3).Seconds() +
		3/(q.AgentTTL/3).Seconds()
	if in > 1.1*budget {
		t.Errorf("at rest the fleet sends %.1f msgs/s, over its budget of %.1f (+10%%)", in, budget)
	}
}
