package queue

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestRebalanceByScores pins which partitions move, by the rendezvous
// scores: an agent over its quota keeps its highest-scoring partitions
// (releases the lowest), and of every (orphan, agent under quota) pair the
// highest-scoring one is matched.
func TestRebalanceByScores(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 4))
	for range 500 {
		partitions := 2 + rng.IntN(100)
		var fleet []string
		for i := range 2 + rng.IntN(8) {
			fleet = append(fleet, fmt.Sprintf("agent-%d", i))
		}
		owners := map[int]string{}
		for p := range partitions {
			if rng.IntN(4) > 0 {
				owners[p] = fleet[min(rng.IntN(len(fleet)), rng.IntN(len(fleet)))]
			}
		}
		quota := Quotas(partitions, fleet)
		got := Rebalance(partitions, fleet, owners)
		best := struct {
			p     int
			a     string
			score uint64
		}{p: -1}
		for _, a := range fleet {
			var held []int
			for p := range partitions {
				if owners[p] == a {
					held = append(held, p)
				}
			}
			if len(held) > quota[a] {
				slices.SortFunc(held, func(x, y int) int {
					sx, sy := rendezvousScore(x, a), rendezvousScore(y, a)
					switch {
					case sx > sy:
						return -1
					case sx < sy:
						return 1
					}
					return x - y
				})
				for i, p := range held {
					if kept := got[p] == a; kept != (i < quota[a]) {
						t.Fatalf("%s over quota %d: partition %d (score rank %d) kept %v", a, quota[a], p, i, kept)
					}
				}
			}
		}
		// The orphans: unowned, or released by an agent over its quota.
		for _, a := range fleet {
			held := 0
			for p := range partitions {
				if owners[p] == a {
					held++
				}
			}
			if held >= quota[a] {
				continue
			}
			for p := range partitions {
				if o, owned := owners[p]; !owned || got[p] != o {
					if s := rendezvousScore(p, a); best.p < 0 || s > best.score {
						best.p, best.a, best.score = p, a, s
					}
				}
			}
		}
		if best.p >= 0 && got[best.p] != best.a {
			t.Fatalf("the best (orphan, agent under quota) pair (%d, %s) is not matched: %s got it", best.p, best.a, got[best.p])
		}
	}
}
