package queue

import (
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

// Rendezvous returns the agent that should own partition p: the one with the
// highest hash of (agent, p), ties going to the smaller name. Every agent
// computes the same answer from the same membership, and a join or leave
// moves only the partitions the joining or leaving agent wins or held.
// It returns "" for no agents.
func Rendezvous(p int, agents []string) string {
	var best string
	var bestScore uint64
	for _, a := range agents {
		s := rendezvousScore(p, a)
		if best == "" || s > bestScore || (s == bestScore && a < best) {
			best, bestScore = a, s
		}
	}
	return best
}

// Assign maps every agent to the sorted partitions it owns under
// Rendezvous. Every listed agent is a key, with an empty slice if it owns
// nothing.
func Assign(partitions int, agents []string) map[string][]int {
	out := make(map[string][]int, len(agents))
	for _, a := range agents {
		out[a] = []int{}
	}
	if len(agents) == 0 {
		return out
	}
	for p := range partitions {
		owner := Rendezvous(p, agents)
		out[owner] = append(out[owner], p)
	}
	for _, ps := range out {
		slices.Sort(ps)
	}
	return out
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
