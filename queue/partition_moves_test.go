package queue_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// settle applies queue.Rebalance to before over agents and checks the
// contract of its result: balanced (every partition owned by one of agents,
// each at its quota), a fixed point (rebalancing it again moves nothing),
// and reached from any part of the moves done: a random subset of the
// moved partitions already at their new owner or only released by the old
// one rebalances to the same assignment, so agents acting at different
// moments never undo each other's moves.
func settle(t *testing.T, rng *rand.Rand, partitions int, agents []string, before map[int]string) map[int]string {
	t.Helper()
	after := queue.Rebalance(partitions, agents, before)
	if err := queue.Balanced(partitions, agents, after); err != nil {
		t.Fatalf("Rebalance(%d, %v) is not balanced: %v", partitions, agents, err)
	}
	if again := queue.Rebalance(partitions, agents, after); !maps.Equal(again, after) {
		t.Fatalf("Rebalance(%d, %v) of its own result moved partitions: %v -> %v", partitions, agents, after, again)
	}
	var moved []int
	for p := range partitions {
		if before[p] != after[p] {
			moved = append(moved, p)
		}
	}
	for range 8 {
		partial := maps.Clone(before)
		if partial == nil {
			partial = map[int]string{}
		}
		for _, p := range moved {
			switch rng.IntN(3) {
			case 0: // not begun
			case 1: // released, not yet taken
				delete(partial, p)
			case 2: // done
				partial[p] = after[p]
			}
		}
		if got := queue.Rebalance(partitions, agents, partial); !maps.Equal(got, after) {
			for p := range partitions {
				if got[p] != after[p] {
					t.Fatalf("Rebalance(%d, %v) from part of its moves (%v) differs at partition %d: %s, not %s",
						partitions, agents, partial, p, got[p], after[p])
				}
			}
		}
	}
	return after
}

// moveChecker counts the partitions a join or leave moves and checks them
// against the bound ceil(P/N)+1, N the fleet's size before the
// event, and against stickiness: on a join only the newcomer gains, and
// exactly its quota; on a leave only the leaver's partitions move.
type moveChecker struct {
	t             *testing.T
	events, total int
	slack         int         // the least of bound - moved over all events
	byN           map[int]int // the most moved in one event, by N
}

func (c *moveChecker) check(partitions int, kind, who string, before, after map[int]string, fleet []string, n int) {
	c.t.Helper()
	moved := 0
	for p := range partitions {
		if before[p] == after[p] {
			continue
		}
		moved++
		if (kind == "join" && after[p] != who) || (kind == "leave" && before[p] != who) {
			c.t.Errorf("%s of %s (P=%d, fleet of %d): partition %d moved from %s to %s", kind, who, partitions, n, p, before[p], after[p])
		}
	}
	want := 0
	switch kind {
	case "join":
		want = queue.Quotas(partitions, fleet)[who]
	case "leave":
		for _, o := range before {
			if o == who {
				want++
			}
		}
	}
	if moved != want {
		c.t.Errorf("%s of %s (P=%d, fleet of %d) moved %d partitions, want %d", kind, who, partitions, n, moved, want)
	}
	bound := (partitions+n-1)/n + 1
	if moved > bound {
		c.t.Errorf("%s of %s (P=%d, fleet of %d) moved %d partitions, more than ceil(P/N)+1 = %d", kind, who, partitions, n, moved, bound)
	}
	if c.events == 0 || bound-moved < c.slack {
		c.slack = bound - moved
	}
	if c.byN == nil {
		c.byN = map[int]int{}
	}
	c.byN[n] = max(c.byN[n], moved)
	c.events++
	c.total += moved
}

// TestPartitionMoves measures the partitions that move when one agent
// joins or leaves a fleet of N = 1..10 agents over P = 64 partitions, in
// several join and leave orders and name sets, each event starting from
// the assignment the previous one settled on (queue.Rebalance is sticky).
// It asserts the bound, at most ceil(P/N)+1 partitions per event,
// and more: on a join only the newcomer gains, and exactly its quota; on a
// leave only the leaver's partitions move; and every assignment is
// balanced, a fixed point, and reached from any part of its moves (settle).
func TestPartitionMoves(t *testing.T) {
	t.Parallel()
	const partitions = 64
	rng := rand.New(rand.NewPCG(14, 64))
	seed := uint64(time.Now().UnixNano())
	t.Logf("partial-progress seed %d", seed)
	prng := rand.New(rand.NewPCG(seed, 14))
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
	c := &moveChecker{t: t}
	for _, set := range slices.Sorted(maps.Keys(nameSets)) {
		names := nameSets[set]
		orders := [][]string{names, slices.Clone(names), slices.Clone(names)}
		slices.Reverse(orders[1])
		rng.Shuffle(len(orders[2]), func(i, j int) { orders[2][i], orders[2][j] = orders[2][j], orders[2][i] })
		for o, order := range orders {
			owners := settle(t, prng, partitions, order[:1], nil)
			// Joins: a fleet of N = 1..9 gains an agent.
			for n := 1; n < len(order); n++ {
				next := settle(t, prng, partitions, order[:n+1], owners)
				c.check(partitions, "join", order[n], owners, next, order[:n+1], n)
				owners = next
			}
			// Leaves: a fleet of N = 10..2 loses an agent, in this order's
			// reverse or at random.
			fleet := slices.Clone(order)
			for len(fleet) > 1 {
				i := len(fleet) - 1
				if o == 2 {
					i = rng.IntN(len(fleet))
				}
				rest := slices.Delete(slices.Clone(fleet), i, i+1)
				next := settle(t, prng, partitions, rest, owners)
				c.check(partitions, "leave", fleet[i], owners, next, rest, len(fleet))
				fleet, owners = rest, next
			}
		}
	}
	var perN []string
	for n := 1; n <= 10; n++ {
		perN = append(perN, fmt.Sprintf("N=%d %d/%d", n, c.byN[n], (partitions+n-1)/n+1))
	}
	t.Logf("%d joins and leaves (P=%d): %d partitions moved in all, none over ceil(P/N)+1 (least slack %d); most moved in one event vs bound: %s",
		c.events, partitions, c.total, c.slack, strings.Join(perN, ", "))
}

// TestPartitionMovesRandomFleets runs random sequences of joins and leaves
// over random partition counts (1..300) and fleets of up to 24 agents, with
// the assertions of TestPartitionMoves on every event.
func TestPartitionMovesRandomFleets(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 64))
	c := &moveChecker{t: t}
	for range 30 {
		partitions := 1 + rng.IntN(300)
		fleet := []string{fmt.Sprintf("a%x", rng.Uint32())}
		owners := settle(t, rng, partitions, fleet, nil)
		for range 60 {
			if len(fleet) == 1 || (len(fleet) < 24 && rng.IntN(2) == 0) {
				who := fmt.Sprintf("a%x", rng.Uint32())
				if slices.Contains(fleet, who) {
					continue
				}
				next := append(slices.Clone(fleet), who)
				after := settle(t, rng, partitions, next, owners)
				c.check(partitions, "join", who, owners, after, next, len(fleet))
				fleet, owners = next, after
				continue
			}
			i := rng.IntN(len(fleet))
			who := fleet[i]
			next := slices.Delete(slices.Clone(fleet), i, i+1)
			after := settle(t, rng, partitions, next, owners)
			c.check(partitions, "leave", who, owners, after, next, len(fleet))
			fleet, owners = next, after
		}
		if t.Failed() {
			return
		}
	}
	t.Logf("%d joins and leaves: none over ceil(P/N)+1 (least slack %d)", c.events, c.slack)
}
