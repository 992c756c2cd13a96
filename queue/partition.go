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
// each other's moves. Agents run it on their own view (AgentView.Step), so
// the moves a join or a leave causes are exactly the newcomer's quota or
// the leaver's holdings, at most ⌈partitions/N⌉ for a fleet of N. With no
// agents the result is empty.
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
			score := make(map[int]uint64, len(ps))
			for _, p := range ps {
				score[p] = rendezvousScore(p, a)
			}
			slices.SortFunc(ps, func(x, y int) int {
				return cmp.Or(cmp.Compare(score[x], score[y]), cmp.Compare(x, y))
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

// AgentView is what one agent knows of a queue when it rebalances: the
// input of its local rules (Step), which apply Rebalance to it.
type AgentView struct {
	// Self is the agent's name.
	Self string
	// Agents are the live agents serving the queue as Self sees them
	// (Self is counted among them in any case).
	Agents []string
	// Held are the partitions Self consumes now.
	Held []int
	// Handing are the partitions Self has handed over (or lost) and still
	// drains: not to be taken back before the drain ends.
	Handing []int
	// Leases is the lease table, partition -> holder, read only when
	// NeedsLeases says so (nil otherwise).
	Leases map[int]string
	// Orphans are the orphans of Self's previous Step (its Orphans).
	Orphans map[int]bool
}

// NeedsLeases reports whether Self must read the lease table before Step:
// only an agent under its quota does, so a settled fleet reads nothing.
func (v AgentView) NeedsLeases(partitions int) bool {
	return len(v.Held) < v.quota(partitions)
}

func (v AgentView) quota(partitions int) int {
	return Quotas(partitions, append(slices.Clone(v.Agents), v.Self))[v.Self]
}

// AgentStep is what one agent does in one round of rebalancing.
type AgentStep struct {
	// Quota is Self's quota.
	Quota int
	// Release are the partitions to hand over now, sorted: only ever the
	// excess of an agent over its quota.
	Release []int
	// Take are the partitions to try to take, in order, for as long as
	// Self holds fewer than Quota: first the orphans Rebalance gives Self,
	// then the fallback, the other orphans that were orphans in the
	// previous Step as well.
	Take []int
	// Orphans are the partitions without a live owner in this view
	// (nil when the lease table was not read): the next view's Orphans.
	Orphans map[int]bool
}

// Step applies the agents' local rules to v: Rebalance of Self's view
// (Self's own holdings as Held says, others' from the lease table; a
// partition with no lease, a lease of an agent not in Agents, or Self's own
// lease on a partition it neither holds nor drains, as after a restart, is
// an orphan). An agent at its quota does nothing; one over it releases its
// lowest-scoring excess; one under it takes what Rebalance plans for it,
// and then, so that no orphan waits on an agent whose view differs and
// leaves it to another, any orphan that stayed one since its last Step.
func (v AgentView) Step(partitions int) AgentStep {
	agents := append(slices.Clone(v.Agents), v.Self)
	st := AgentStep{Quota: Quotas(partitions, agents)[v.Self]}
	owners := make(map[int]string, partitions)
	for _, p := range v.Held {
		owners[p] = v.Self
	}
	if v.Leases != nil && len(v.Held) < st.Quota {
		live := make(map[string]bool, len(agents))
		for _, a := range agents {
			live[a] = true
		}
		handing := make(map[int]bool, len(v.Handing))
		for _, p := range v.Handing {
			handing[p] = true
		}
		st.Orphans = make(map[int]bool)
		for p := range partitions {
			holder, leased := v.Leases[p]
			switch {
			case owners[p] == v.Self:
				// Held: the renewals keep its lease or find it lost.
			case leased && holder != v.Self && live[holder]:
				owners[p] = holder
			case handing[p]:
				// An orphan for the others, not yet for Self.
			default:
				st.Orphans[p] = true
			}
		}
	}
	if v.Leases == nil && len(v.Held) <= st.Quota {
		return st // nothing to release, and nothing known to take
	}
	want := Rebalance(partitions, agents, owners)
	for _, p := range v.Held {
		if want[p] != v.Self {
			st.Release = append(st.Release, p)
		}
	}
	slices.Sort(st.Release)
	if len(v.Held) >= st.Quota {
		return st
	}
	var spare []int
	for p := range partitions {
		switch {
		case !st.Orphans[p]:
		case want[p] == v.Self:
			st.Take = append(st.Take, p)
		case v.Orphans[p]:
			spare = append(spare, p)
		}
	}
	st.Take = append(st.Take, spare...)
	return st
}

// Takes tries st.Take in order with take (which reports whether it got
// the partition) for as long as Self, holding held partitions after the
// releases, is under its quota, and returns how many it then holds.
func (st AgentStep) Takes(held int, take func(p int) bool) int {
	for _, p := range st.Take {
		if held >= st.Quota {
			break
		}
		if take(p) {
			held++
		}
	}
	return held
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
	const offset64, prime64 = 14695981039346656037, 1099511628211
	x := uint64(offset64)
	for i := range len(agent) {
		x ^= uint64(agent[i])
		x *= prime64
	}
	x *= prime64 // the 0 byte between agent and partition
	var buf [20]byte
	for _, c := range strconv.AppendInt(buf[:0], int64(p), 10) {
		x ^= uint64(c)
		x *= prime64
	}
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
