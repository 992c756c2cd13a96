package localfleet_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// ownership maps each partition to the live agent that owns it.
func ownership(agents []*agent.Agent) map[int]string {
	o := map[int]string{}
	for _, a := range agents {
		for _, p := range a.Partitions() {
			o[p] = a.Name()
		}
	}
	return o
}

// TestPartitionMovesInAFleet: in a real fleet of 3 agents over 16
// partitions, a fourth agent's join and then one agent's leave move
// exactly the partitions queue.Assign says (the newcomer's share, the
// leaver's share) and no other: every other agent keeps what it owned.
func TestPartitionMovesInAFleet(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const partitions = 16
	argv, env := testworker.Command()
	var acfg agent.Config
	acfg.Pool.Size = 1
	acfg.Pool.Worker = worker.Config{Command: argv, Env: env}
	acfg.RebalanceInterval = 200 * time.Millisecond
	f, err := localfleet.Start(ctx, localfleet.Config{
		TempPattern: "localfleet-moves-", Queue: queue.Config{Partitions: partitions}, Agents: 3, Agent: acfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())

	moves := func(before, after map[int]string, who string) int {
		t.Helper()
		n := 0
		for p := range partitions {
			if before[p] != after[p] {
				n++
				if before[p] != who && after[p] != who {
					t.Errorf("partition %d moved from %s to %s, neither of them %s", p, before[p], after[p], who)
				}
			}
		}
		return n
	}
	before := ownership(f.Agents())
	join := acfg
	join.Name = "agent-4"
	if _, err := f.StartAgent(ctx, join); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := localfleet.WaitBalanced(wctx, f.Agents(), partitions); err != nil {
		t.Fatal(err)
	}
	joined := ownership(f.Agents())
	names := []string{"agent-1", "agent-2", "agent-3", "agent-4"}
	if got, want := moves(before, joined, "agent-4"), len(queue.Assign(partitions, names)["agent-4"]); got != want {
		t.Errorf("join moved %d partitions, want the newcomer's share %d", got, want)
	}

	leaver := f.Agents()[1]
	if err := leaver.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	live := slices.DeleteFunc(f.Agents(), func(a *agent.Agent) bool { return a == leaver })
	if err := localfleet.WaitBalanced(wctx, live, partitions); err != nil {
		t.Fatal(err)
	}
	left := ownership(live)
	if got, want := moves(joined, left, leaver.Name()), len(queue.Assign(partitions, names)[leaver.Name()]); got != want {
		t.Errorf("leave of %s moved %d partitions, want its share %d", leaver.Name(), got, want)
	}
	t.Logf("join moved %d, leave moved %d of %d partitions (ceil(P/N)+1: %d and %d)",
		moves(before, joined, "agent-4"), moves(joined, left, leaver.Name()), partitions, (partitions+2)/3+1, (partitions+3)/4+1)
}
