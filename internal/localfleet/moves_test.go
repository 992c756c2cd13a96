package localfleet_test

import (
	"context"
	"maps"
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
// partitions, a fourth agent's join moves exactly what queue.Rebalance
// plans from the owners before it (the newcomer's quota, each old agent's
// lowest-scoring excess, to the newcomer only), and then one agent's leave
// moves only the leaver's partitions, to the survivors under quota; each
// within ceil(P/N)+1, and the fleet stays put once settled.
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

	// moves counts the partitions whose owner changed, each of which must
	// have moved to (join) or from (leave) who, and checks the bound.
	moves := func(kind string, before, after map[int]string, who string, n int) int {
		t.Helper()
		moved := 0
		for p := range partitions {
			if before[p] == after[p] {
				continue
			}
			moved++
			if (kind == "join" && after[p] != who) || (kind == "leave" && before[p] != who) {
				t.Errorf("%s of %s: partition %d moved from %s to %s", kind, who, p, before[p], after[p])
			}
		}
		if bound := (partitions+n-1)/n + 1; moved > bound {
			t.Errorf("%s of %s moved %d partitions in a fleet of %d, more than ceil(P/N)+1 = %d", kind, who, moved, n, bound)
		}
		return moved
	}
	// still checks that the settled fleet moves nothing more over 5
	// rebalance intervals (an observation window, not a synchronisation).
	still := func(agents []*agent.Agent, settled map[int]string) {
		t.Helper()
		deadline := time.Now().Add(5 * acfg.RebalanceInterval)
		for time.Now().Before(deadline) {
			if now := ownership(agents); !maps.Equal(now, settled) {
				t.Fatalf("settled fleet moved on: %v, then %v", settled, now)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	before := ownership(f.Agents())
	still(f.Agents(), before)
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
	if plan := queue.Rebalance(partitions, names, before); !maps.Equal(joined, plan) {
		t.Errorf("after the join the fleet owns %v, queue.Rebalance plans %v", joined, plan)
	}
	joinMoved := moves("join", before, joined, "agent-4", 3)
	if want := queue.Quotas(partitions, names)["agent-4"]; joinMoved != want {
		t.Errorf("join moved %d partitions, want the newcomer's quota %d", joinMoved, want)
	}
	still(f.Agents(), joined)

	leaver := f.Agents()[1]
	if err := leaver.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	live := slices.DeleteFunc(f.Agents(), func(a *agent.Agent) bool { return a == leaver })
	if err := localfleet.WaitBalanced(wctx, live, partitions); err != nil {
		t.Fatal(err)
	}
	left := ownership(live)
	leaveMoved := moves("leave", joined, left, leaver.Name(), 4)
	held := 0
	for _, o := range joined {
		if o == leaver.Name() {
			held++
		}
	}
	if leaveMoved != held {
		t.Errorf("leave of %s moved %d partitions, want its %d", leaver.Name(), leaveMoved, held)
	}
	still(live, left)
	t.Logf("join moved %d, leave moved %d of %d partitions (ceil(P/N)+1: %d and %d)",
		joinMoved, leaveMoved, partitions, (partitions+2)/3+1, (partitions+3)/4+1)
}
