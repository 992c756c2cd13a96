package queue_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/procfleet/procfleet/queue"
)

// owners maps each partition to its agent under queue.Assign.
func owners(partitions int, agents []string) []string {
	o := make([]string, partitions)
	for a, ps := range queue.Assign(partitions, agents) {
		for _, p := range ps {
			o[p] = a
		}
	}
	return o
}

// TestPartitionMoves measures the partitions that move when one agent
// joins or leaves a fleet of N = 1..10 agents over P = 64 partitions, in
// several join and leave orders and name sets. It pins that a move only
// ever involves the agent that joined or left (every other agent keeps all
// its partitions), so the moves are exactly the partitions that agent wins
// or held. It also measures them against the bound ceil(P/N)+1 and
// logs the worst case: plain rendezvous hashing does not balance exactly
// (an agent's share is binomial around P/N), so that bound is not met for
// every fleet; see README "Performance".
func TestPartitionMoves(t *testing.T) {
	t.Parallel()
	const partitions = 64
	rng := rand.New(rand.NewPCG(14, 64))
	nameSets := map[string][]string{}
	for _, pat := range []string{"agent-%d", "bench-agent-%d", "host%02d.example:4242"} {
		for i := 1; i <= 10; i++ {
			nameSets[pat] = append(nameSets[pat], fmt.Sprintf(pat, i))
		}
	}
	for s := range 3 {
		for range 10 {
			nameSets[fmt.Sprintf("random-%d", s)] = append(nameSets[fmt.Sprintf("random-%d", s)], fmt.Sprintf("h%x-%d", rng.Uint64(), rng.IntN(1<<16)))
		}
	}
	events, over, worst := 0, 0, 0
	check := func(kind, who string, before, after []string, n int) {
		t.Helper()
		moved := 0
		for p := range partitions {
			if before[p] == after[p] {
				continue
			}
			moved++
			if (kind == "join" && after[p] != who) || (kind == "leave" && before[p] != who) {
				t.Errorf("%s of %s (fleet of %d): partition %d moved from %s to %s", kind, who, n, p, before[p], after[p])
			}
		}
		bound := (partitions+n-1)/n + 1
		events++
		if moved > bound {
			over++
			worst = max(worst, moved-bound)
		}
	}
	for _, names := range nameSets {
		orders := [][]string{names, slices.Clone(names), slices.Clone(names)}
		slices.Reverse(orders[1])
		rng.Shuffle(len(orders[2]), func(i, j int) { orders[2][i], orders[2][j] = orders[2][j], orders[2][i] })
		for o, order := range orders {
			// Joins: a fleet of N = 1..9 gains an agent.
			for n := 1; n < len(order); n++ {
				check("join", order[n], owners(partitions, order[:n]), owners(partitions, order[:n+1]), n)
			}
			// Leaves: a fleet of N = 10..2 loses an agent, in this order's
			// reverse or from the front.
			fleet := slices.Clone(order)
			for len(fleet) > 1 {
				i := len(fleet) - 1
				if o == 2 {
					i = rng.IntN(len(fleet))
				}
				next := slices.Delete(slices.Clone(fleet), i, i+1)
				check("leave", fleet[i], owners(partitions, fleet), owners(partitions, next), len(fleet))
				fleet = next
			}
		}
	}
	t.Logf("%d joins and leaves: %d moved more than ceil(P/N)+1 partitions, by up to %d", events, over, worst)
}
