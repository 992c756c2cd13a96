package queue_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// simAgent is one agent of simFleet: what it consumes, what it drains, and
// its own, lagging view of the membership.
type simAgent struct {
	name    string
	held    map[int]bool
	handing map[int]int // partition -> rounds until its drain ends
	view    []string
	lag     int // rounds until view catches up with the truth
	orphans map[int]bool
}

// simFleet runs the agents' local rules (queue.AgentView.Step) the way
// lane.rebalance does, against a lease table with the semantics of
// AcquireLease/TakeLease: a lease can be taken when there is none, or when
// its holder is dead and the taker's view has it gone. Agents act in a
// random order each round, each with its own lag in seeing joins and
// leaves, and drains take a random number of rounds.
type simFleet struct {
	t          *testing.T
	rng        *rand.Rand
	partitions int
	live       []string // the truth, sorted
	agents     map[string]*simAgent
	leases     map[int]string
	moves      int // owner changes of the lease table
}

func (f *simFleet) setLease(p int, holder string) {
	if old, ok := f.leases[p]; ok && old != holder && holder != "" {
		f.moves++
	}
	if _, ok := f.leases[p]; !ok && holder != "" {
		f.moves++
	}
	if holder == "" {
		delete(f.leases, p)
		return
	}
	f.leases[p] = holder
}

func (f *simFleet) join(name string) {
	f.live = append(f.live, name)
	slices.Sort(f.live)
	f.agents[name] = &simAgent{name: name, held: map[int]bool{}, handing: map[int]int{}, view: slices.Clone(f.live)}
	f.lagViews()
}

// leave removes name from the truth: gracefully (its drains end and its
// leases are deleted first, as Agent.Stop does) or by a crash (its leases
// stay until a survivor that sees it gone takes them).
func (f *simFleet) leave(name string, crash bool) {
	a := f.agents[name]
	if !crash {
		for p := range a.held {
			if f.leases[p] == name {
				delete(f.leases, p)
			}
		}
		for p := range a.handing {
			if f.leases[p] == name {
				delete(f.leases, p)
			}
		}
	}
	delete(f.agents, name)
	f.live = slices.DeleteFunc(f.live, func(n string) bool { return n == name })
	f.lagViews()
}

// lagViews gives every agent a new lag (0..3 rounds) before it sees the
// current truth.
func (f *simFleet) lagViews() {
	for _, a := range f.agents {
		a.lag = f.rng.IntN(4)
	}
}

// round lets every agent act once, in a random order.
func (f *simFleet) round() {
	names := slices.Sorted(maps.Keys(f.agents))
	f.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	for _, n := range names {
		f.act(f.agents[n])
	}
}

func (f *simFleet) act(a *simAgent) {
	t := f.t
	t.Helper()
	if a.lag > 0 {
		a.lag--
	} else {
		a.view = slices.Clone(f.live)
	}
	for p, left := range a.handing {
		if left > 0 {
			a.handing[p]--
			continue
		}
		delete(a.handing, p)
		if f.leases[p] == a.name {
			f.setLease(p, "")
		}
	}
	v := queue.AgentView{Self: a.name, Agents: a.view, Orphans: a.orphans}
	v.Held = slices.Sorted(maps.Keys(a.held))
	v.Handing = slices.Sorted(maps.Keys(a.handing))
	if v.NeedsLeases(f.partitions) {
		v.Leases = maps.Clone(f.leases)
	}
	st := v.Step(f.partitions)
	a.orphans = st.Orphans
	if len(st.Release) > 0 && len(v.Held)-len(st.Release) != st.Quota {
		t.Fatalf("%s holding %d (quota %d in its view %v) released %v", a.name, len(v.Held), st.Quota, a.view, st.Release)
	}
	for _, p := range st.Release {
		if !a.held[p] {
			t.Fatalf("%s released partition %d it does not hold", a.name, p)
		}
		delete(a.held, p)
		a.handing[p] = f.rng.IntN(3)
	}
	for _, p := range st.Take {
		if _, draining := a.handing[p]; draining || a.held[p] {
			t.Fatalf("%s told to take partition %d it holds or drains", a.name, p)
		}
	}
	st.Takes(len(a.held), func(p int) bool {
		holder, leased := f.leases[p]
		_, holderAlive := f.agents[holder]
		if leased && holder != a.name && (holderAlive || slices.Contains(a.view, holder)) {
			return false // held: by a live agent, or by one not yet seen gone
		}
		f.setLease(p, a.name)
		a.held[p] = true
		return true
	})
	if len(a.held) > st.Quota {
		t.Fatalf("%s holds %d partitions, over its quota %d in its view %v", a.name, len(a.held), st.Quota, a.view)
	}
	// No partition is consumed by two live agents.
	for _, b := range f.agents {
		if b == a {
			continue
		}
		for p := range a.held {
			if b.held[p] {
				t.Fatalf("partition %d consumed by %s and %s", p, a.name, b.name)
			}
		}
	}
}

// settled reports whether the fleet is balanced over the truth: every
// partition leased by one live agent that consumes it, at its quota, and
// nothing draining.
func (f *simFleet) settled() error {
	owners := map[int]string{}
	for _, a := range f.agents {
		if len(a.handing) > 0 || a.lag > 0 {
			return fmt.Errorf("%s still drains %v or lags", a.name, a.handing)
		}
		for p := range a.held {
			if f.leases[p] != a.name {
				return fmt.Errorf("%s consumes partition %d, leased by %q", a.name, p, f.leases[p])
			}
			owners[p] = a.name
		}
	}
	return queue.Balanced(f.partitions, f.live, owners)
}

// settle runs rounds until the fleet has settled (failing after 30), then
// 10 more in which nothing may move, and returns the lease moves.
func (f *simFleet) settle(what string) int {
	f.t.Helper()
	for r := 0; ; r++ {
		if f.settled() == nil {
			break
		}
		if r == 30 {
			f.t.Fatalf("%s: not settled after 30 rounds: %v", what, f.settled())
		}
		f.round()
	}
	moves, leases := f.moves, maps.Clone(f.leases)
	for range 10 {
		f.round()
	}
	if !maps.Equal(leases, f.leases) || f.moves != moves {
		f.t.Fatalf("%s: the settled fleet moved on: %v -> %v", what, leases, f.leases)
	}
	return moves
}

// TestAgentStepsConverge runs the agents' local rules in a simulated fleet
// where each agent sees joins and leaves with its own lag and drains take
// rounds: after every join, graceful leave or crash the fleet settles
// within a few rounds and then moves nothing more (no flapping); no agent
// ever releases while at or under its quota in its own view; no partition
// is consumed twice; and, despite the lags, a join moves exactly the
// newcomer's quota and a leave or crash exactly the leaver's partitions, at
// most ceil(P/N). Some events also come in bursts (two at once), after
// which the fleet must still settle.
func TestAgentStepsConverge(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	events := 0
	for range 20 {
		partitions := 1 + rng.IntN(80)
		f := &simFleet{t: t, rng: rng, partitions: partitions, agents: map[string]*simAgent{}, leases: map[int]string{}}
		next := 0
		newName := func() string { next++; return fmt.Sprintf("agent-%d", rng.IntN(100)*100+next) }
		f.join(newName())
		f.settle("first agent")
		for range 40 {
			n := len(f.live)
			before := f.moves
			burst := rng.IntN(6) == 0
			switch {
			case n == 1 || (n < 12 && rng.IntN(2) == 0):
				who := newName()
				f.join(who)
				if !burst {
					moved := f.settle("join of "+who) - before
					if want := queue.Quotas(partitions, f.live)[who]; moved != want || len(f.agents[who].held) != want {
						t.Fatalf("P=%d: join of %s to %d agents moved %d partitions, want its quota %d", partitions, who, n, moved, want)
					}
				}
			default:
				who := f.live[rng.IntN(n)]
				had := len(f.agents[who].held) + len(f.agents[who].handing)
				crash := rng.IntN(2) == 0
				f.leave(who, crash)
				if !burst {
					moved := f.settle("leave of "+who) - before
					if moved != had || moved > (partitions+n-1)/n+1 {
						t.Fatalf("P=%d: leave (crash %v) of %s from %d agents moved %d partitions, want its %d (bound %d)",
							partitions, crash, who, n, moved, had, (partitions+n-1)/n+1)
					}
				}
			}
			if burst {
				f.round()
				if len(f.live) > 1 && rng.IntN(2) == 0 {
					f.leave(f.live[rng.IntN(len(f.live))], rng.IntN(2) == 0)
				} else {
					f.join(newName())
				}
				f.settle("a burst")
			}
			events++
		}
	}
	t.Logf("%d events settled, none flapped", events)
}
