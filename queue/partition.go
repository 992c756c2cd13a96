package queue

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
)

// PartitionOf returns the partition the jobs stream files session under:
// fnv-1a (32 bit) of the session token modulo Partitions, which is what the
// server's {{partition(P,1)}} subject transform computes.
func (c Config) PartitionOf(session string) int {
	n := c.Partitions
	if n <= 0 {
		n = c.WithDefaults().Partitions
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(session))
	return int(h.Sum32() % uint32(n))
}

// Quotas returns how many partitions each of agents holds once the fleet
// has settled: with partitions = q·N + r over N distinct agents, the first r
// in sorted-name order hold q+1 and the others q. The quotas depend on the
// membership alone, so every agent computes the same ones, and a join never
// raises an old agent's quota nor a leave lower a remaining one's: after a
// join only the newcomer gains, after a leave only the leaver's partitions
// move (see Rebalance).
func Quotas(partitions int, agents []string) map[string]int {
	names := members(agents)
	out := make(map[string]int, len(names))
	if len(names) == 0 {
		return out
	}
	q, r := partitions/len(names), partitions%len(names)
	for i, a := range names {
		out[a] = q
		if i < r {
			out[a]++
		}
	}
	return out
}

// Rebalance returns the assignment (partition -> agent, every partition in
// [0, partitions)) that agents settle on from owners, the current owner of
// each partition. It is sticky: an agent keeps what it holds up to its
// quota (Quotas), and only these move:
//
//   - An agent over its quota releases the excess, the partitions it holds
//     with the lowest rendezvous score for itself.
//   - The orphans (partitions without an owner among agents, and those just
//     released) go to the agents under their quota: of every (orphan, agent
//     under quota) pair, highest rendezvous score first, the orphan goes to
//     the agent if both are still free.
//
// An agent at or under its quota never loses a partition, and no orphan
// goes to an agent at its quota, so a settled assignment is a fixed point
// (Rebalance of its own result changes nothing), and any part of the moves
// done (releases alone, or releases and takes) leads to the same result:
// agents acting on the same membership at different moments do not undo
// each other's moves. Agents run it on their own view (see the agent's
// membership loop), so the moves a join or a leave causes are exactly the
// newcomer's quota or the leaver's holdings, at most ⌈partitions/N⌉. With
// no agents the result is empty.
func Rebalance(partitions int, agents []string, owners map[int]string) map[int]string {
	quota := Quotas(partitions, agents)
	out := make(map[int]string, partitions)
	if len(quota) == 0 {
		return out
	}
	held := make(map[string][]int, len(quota))
	for p := range partitions {
		if a, ok := owners[p]; ok {
			if _, member := quota[a]; member {
				held[a] = append(held[a], p)
			}
		}
	}
	room := make(map[string]int, len(quota))
	for a, q := range quota {
		ps := held[a]
		if excess := len(ps) - q; excess > 0 {
			// Keep the highest scores: release the excess lowest.
			slices.SortFunc(ps, func(x, y int) int {
				return cmp.Or(cmp.Compare(rendezvousScore(x, a), rendezvousScore(y, a)), cmp.Compare(x, y))
			})
			ps = ps[excess:]
		}
		for _, p := range ps {
			out[p] = a
		}
		room[a] = q - len(ps)
	}
	type pair struct {
		p     int
		a     string
		score uint64
	}
	var pairs []pair
	for p := range partitions {
		if _, kept := out[p]; kept {
			continue
		}
		for a, n := range room {
			if n > 0 {
				pairs = append(pairs, pair{p, a, rendezvousScore(p, a)})
			}
		}
	}
	slices.SortFunc(pairs, func(x, y pair) int {
		return cmp.Or(cmp.Compare(y.score, x.score), cmp.Compare(x.a, y.a), cmp.Compare(x.p, y.p))
	})
	for _, pr := range pairs {
		if _, taken := out[pr.p]; taken || room[pr.a] == 0 {
			continue
		}
		out[pr.p] = pr.a
		room[pr.a]--
	}
	return out
}

// Balanced returns nil when owners is a settled assignment of partitions
// among agents: every partition owned by one of agents, and each agent
// holding exactly its quota (Quotas), so that Rebalance moves nothing.
// Otherwise it says what differs.
func Balanced(partitions int, agents []string, owners map[int]string) error {
	quota := Quotas(partitions, agents)
	if len(quota) == 0 {
		return fmt.Errorf("queue: no agents to own %d partitions", partitions)
	}
	count := make(map[string]int, len(quota))
	for p := range partitions {
		a, ok := owners[p]
		if !ok || a == "" {
			return fmt.Errorf("partition %d has no owner", p)
		}
		if _, member := quota[a]; !member {
			return fmt.Errorf("partition %d is owned by %s, not one of %v", p, a, members(agents))
		}
		count[a]++
	}
	for _, a := range members(agents) {
		if count[a] != quota[a] {
			return fmt.Errorf("agent %s owns %d partitions, its quota is %d", a, count[a], quota[a])
		}
	}
	return nil
}

// members returns agents sorted, without duplicates or empty names.
func members(agents []string) []string {
	out := slices.DeleteFunc(slices.Clone(agents), func(a string) bool { return a == "" })
	slices.Sort(out)
	return slices.Compact(out)
}

// rendezvousScore hashes (agent, p) with fnv-1a and a splitmix64 finaliser:
// fnv alone leaves nearby partition numbers with correlated scores, which
// would hand runs of partitions to the same agent.
func rendezvousScore(p int, agent string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(agent))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write(strconv.AppendInt(nil, int64(p), 10))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
