package agent_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
)

// TestFailoverAfterServerRestart: the survivors' view of the registry
// outlives a restart of the NATS server, so a crash right after it still
// moves the dead agent's partitions once its entry expires, long before its
// leases would (here twenty times later; the bound, a quarter of the lease
// TTL, leaves a loaded machine five times the 2 s expected).
func TestFailoverAfterServerRestart(t *testing.T) {
	t.Parallel()
	same := fleettest.Restartable(t)
	first := fleettest.StartServer(t, same)

	cfg := fleetConfig(3, 1)
	cfg.Server = first
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Agent.Queue.LeaseTTL = 40 * time.Second
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)

	first.Shutdown()
	first.WaitForShutdown()
	restarted := time.Now()
	fleettest.StartServer(t, same)
	stopAgentsFirst(t, f)
	// Every agent is back once it has heartbeated through the new server.
	fleettest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		infos, err := f.Topology().ListAgents(ctx)
		if err != nil {
			return err
		}
		back := 0
		for _, in := range infos {
			if in.UpdatedAt.After(restarted) {
				back++
			}
		}
		if back != len(f.Agents) {
			return fmt.Errorf("%d of %d agents heartbeated since the restart", back, len(f.Agents))
		}
		return nil
	})
	f.WaitBalanced(t, 30*time.Second)

	victim := f.Agents[2]
	killed := time.Now()
	victim.Kill()
	f.WaitBalanced(t, 60*time.Second)
	took := time.Since(killed)
	t.Logf("agent killed %s after a server restart: its partitions moved in %s",
		killed.Sub(restarted).Round(time.Millisecond), took.Round(time.Millisecond))
	if bound := f.Topology().Config.LeaseTTL / 4; took > bound {
		t.Errorf("failover took %s, want at most %s (the dead agent's leases were waited out)", took, bound)
	}
}
