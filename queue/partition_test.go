package queue_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// TestPartitionTransform checks the stream's subject transform against a
// plain publisher: a session job lands under the partition the Go side
// computes, and the any subject stays as it is.
func TestPartitionTransform(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 64})
	ctx := testCtx(t)

	const n = 1000
	sessions := make([]string, n)
	for i := range sessions {
		sessions[i] = fmt.Sprintf("sess-%d-%x", i, i*7919)
	}
	// Plain core publishes, as any NATS client would send them.
	for _, s := range sessions {
		if err := b.nc.Publish("fleet.job.s."+s, []byte(`{"command":"echo"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.nc.Publish("fleet.job.any", []byte(`{"command":"echo"}`)); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.FlushWithContext(ctx); err != nil {
		t.Fatal(err)
	}
	var info *jetstream.StreamInfo
	eventually(t, 10*time.Second, func() error {
		var err error
		info, err = b.topo.Jobs.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			return err
		}
		if info.State.Msgs != n+1 {
			return fmt.Errorf("%d messages stored, want %d", info.State.Msgs, n+1)
		}
		return nil
	})

	if info.State.Subjects["fleet.job.any"] != 1 {
		t.Errorf("fleet.job.any not stored as is: %v", info.State.Subjects["fleet.job.any"])
	}
	stored := make(map[string]int) // session -> server's partition
	for subj := range info.State.Subjects {
		if subj == "fleet.job.any" {
			continue
		}
		rest, ok := strings.CutPrefix(subj, "fleet.job.p.")
		if !ok {
			t.Fatalf("stored subject %q is not a partition subject", subj)
		}
		p, session, _ := strings.Cut(rest, ".")
		pn, err := strconv.Atoi(p)
		if err != nil {
			t.Fatalf("stored subject %q: %v", subj, err)
		}
		stored[session] = pn
	}
	if len(stored) != n {
		t.Fatalf("%d sessions stored, want %d", len(stored), n)
	}
	used := make(map[int]bool)
	for _, s := range sessions {
		if got, want := stored[s], b.topo.PartitionOf(s); got != want {
			t.Errorf("session %q: server partition %d, PartitionOf %d", s, got, want)
		}
		used[stored[s]] = true
	}
	if len(used) != 64 {
		t.Errorf("1000 sessions used %d of 64 partitions", len(used))
	}

	// The partition's consumer delivers a session's job; the stored subject
	// carries the session.
	s := sessions[42]
	want := fmt.Sprintf("fleet.job.p.%d.%s", b.topo.PartitionOf(s), s)
	c, err := b.topo.PartitionConsumer(ctx, b.topo.PartitionOf(s))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for !found {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if m.Subject() == want {
				found = true
			}
			job, err := queue.ParseJob(m.Subject(), m.Headers(), m.Data(), 1, b.cfg)
			if err != nil {
				t.Fatalf("ParseJob(%q): %v", m.Subject(), err)
			}
			if b.topo.PartitionOf(job.Session) != b.topo.PartitionOf(s) {
				t.Errorf("partition consumer delivered session %q of partition %d", job.Session, b.topo.PartitionOf(job.Session))
			}
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		if got == 0 {
			break
		}
	}
	if !found {
		t.Errorf("partition consumer never delivered session %q", s)
	}
}

func TestPartitionOfMatchesDefaults(t *testing.T) {
	t.Parallel()
	// Zero Partitions means the default, never a division by zero.
	if got, want := (queue.Config{}).PartitionOf("s1"), (queue.Config{Partitions: 64}).PartitionOf("s1"); got != want {
		t.Errorf("PartitionOf with zero config = %d, want %d", got, want)
	}
}

// TestQuotas: the quotas add up to P and differ by at most one, the larger
// ones go to the first names in sorted order whatever order the agents are
// listed in, and a join never raises an old agent's quota nor a leave lower
// a remaining agent's (what keeps a join's and a leave's moves to the
// newcomer's or the leaver's share).
func TestQuotas(t *testing.T) {
	t.Parallel()
	if got := queue.Quotas(8, nil); len(got) != 0 {
		t.Errorf("Quotas with no agents = %v, want empty", got)
	}
	if got := queue.Quotas(10, []string{"b", "a", "c", "a", ""}); !maps.Equal(got, map[string]int{"a": 4, "b": 3, "c": 3}) {
		t.Errorf("Quotas(10, b a c a \"\") = %v, want a:4 b:3 c:3", got)
	}
	if got := queue.Quotas(2, []string{"x", "y", "z"}); !maps.Equal(got, map[string]int{"x": 1, "y": 1, "z": 0}) {
		t.Errorf("Quotas(2, x y z) = %v", got)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	for range 2000 {
		partitions := 1 + rng.IntN(500)
		var fleet []string
		for range 1 + rng.IntN(30) {
			fleet = append(fleet, fmt.Sprintf("n%d", rng.IntN(1000)))
		}
		q := queue.Quotas(partitions, fleet)
		sum, lo, hi := 0, partitions, 0
		for _, n := range q {
			sum, lo, hi = sum+n, min(lo, n), max(hi, n)
		}
		if sum != partitions || hi-lo > 1 {
			t.Fatalf("Quotas(%d, %v) = %v: sum %d, spread %d", partitions, fleet, q, sum, hi-lo)
		}
		joiner := fmt.Sprintf("n%d", rng.IntN(1000))
		if _, in := q[joiner]; in {
			continue
		}
		joined := queue.Quotas(partitions, append(slices.Clone(fleet), joiner))
		for a, n := range q {
			if joined[a] > n {
				t.Fatalf("P=%d: %s joining %v raised %s's quota from %d to %d", partitions, joiner, fleet, a, n, joined[a])
			}
		}
	}
}

// TestRebalance starts from arbitrary owners (agents over and under quota,
// owners that are not members, missing partitions) and checks the rules:
// the result is balanced and a fixed point; an agent at or under its quota
// keeps every partition it held; an agent over it keeps exactly its quota,
// its highest-scoring partitions (which Rebalance of its holdings alone,
// the view an agent has without the lease table, says too); and only
// agents under quota gain.
func TestRebalance(t *testing.T) {
	t.Parallel()
	if got := queue.Rebalance(4, nil, map[int]string{0: "x"}); len(got) != 0 {
		t.Errorf("Rebalance with no agents = %v, want empty", got)
	}
	if got := queue.Rebalance(3, []string{"solo"}, nil); !maps.Equal(got, map[int]string{0: "solo", 1: "solo", 2: "solo"}) {
		t.Errorf("Rebalance(3, solo) = %v", got)
	}
	if err := queue.Balanced(3, []string{"a", "b"}, map[int]string{0: "a", 1: "a", 2: "a"}); err == nil {
		t.Error("Balanced accepted a holding 3 of 3 partitions beside b")
	}
	if err := queue.Balanced(2, []string{"a", "b"}, map[int]string{0: "a", 1: "c"}); err == nil {
		t.Error("Balanced accepted a partition owned by a non-member")
	}
	if err := queue.Balanced(2, []string{"a", "b"}, map[int]string{0: "a"}); err == nil {
		t.Error("Balanced accepted an unowned partition")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	for range 1500 {
		partitions := 1 + rng.IntN(130)
		var fleet []string
		for i := range 1 + rng.IntN(12) {
			fleet = append(fleet, fmt.Sprintf("agent-%d", i))
		}
		owners := map[int]string{}
		for p := range partitions {
			switch x := rng.IntN(10); {
			case x == 0: // unowned
			case x == 1:
				owners[p] = "gone-agent"
			default: // skewed, so that some agents are far over quota
				owners[p] = fleet[min(rng.IntN(len(fleet)), rng.IntN(len(fleet)))]
			}
		}
		quota := queue.Quotas(partitions, fleet)
		got := queue.Rebalance(partitions, fleet, owners)
		if err := queue.Balanced(partitions, fleet, got); err != nil {
			t.Fatalf("Rebalance(%d, %v, %v): %v", partitions, fleet, owners, err)
		}
		if again := queue.Rebalance(partitions, fleet, got); !maps.Equal(again, got) {
			t.Fatalf("Rebalance is not a fixed point: %v -> %v", got, again)
		}
		for _, a := range fleet {
			var held []int
			for p := range partitions {
				if owners[p] == a {
					held = append(held, p)
				}
			}
			kept := 0
			for _, p := range held {
				if got[p] == a {
					kept++
				}
			}
			if len(held) <= quota[a] && kept != len(held) {
				t.Fatalf("%s at or under quota %d lost %d of its %d partitions", a, quota[a], len(held)-kept, len(held))
			}
			if len(held) > quota[a] {
				if kept != quota[a] {
					t.Fatalf("%s over quota %d kept %d of %d", a, quota[a], kept, len(held))
				}
				alone := map[int]string{}
				for _, p := range held {
					alone[p] = a
				}
				// The agent's own view: only its holdings known.
				local := queue.Rebalance(partitions, fleet, alone)
				for _, p := range held {
					if (local[p] == a) != (got[p] == a) {
						t.Fatalf("%s keeps partition %d by the full table (%v) but not by its own view, or the reverse", a, p, got[p] == a)
					}
				}
			}
			for p := range partitions {
				if got[p] == a && owners[p] != a && len(held) >= quota[a] {
					t.Fatalf("%s at or over quota gained partition %d", a, p)
				}
			}
		}
	}
}

// TestAgentStep pins the local rules beyond Rebalance: an agent at its
// quota reads nothing and does nothing; one under it takes first what
// Rebalance plans for it, then an orphan planned for another agent only
// once it stayed an orphan since the previous reading (the fallback); and
// a partition it still drains is never taken back, nor one whose holder is
// live.
func TestAgentStep(t *testing.T) {
	t.Parallel()
	// 4 partitions over a, b: quota 2 each.
	at := queue.AgentView{Self: "a", Agents: []string{"a", "b"}, Held: []int{0, 1}}
	if at.NeedsLeases(4) {
		t.Error("an agent at its quota asks for the lease table")
	}
	if st := at.Step(4); st.Quota != 2 || len(st.Release) != 0 || len(st.Take) != 0 {
		t.Errorf("Step at quota = %+v, want nothing", st)
	}
	over := queue.AgentView{Self: "a", Agents: []string{"b"}, Held: []int{0, 1, 2, 3}}
	if st := over.Step(4); len(st.Release) != 2 || len(st.Take) != 0 {
		t.Errorf("Step over quota = %+v, want 2 released", st)
	}

	// a holds nothing, b holds nothing: all four are orphans; Rebalance
	// plans two for a and two for b.
	under := queue.AgentView{Self: "a", Agents: []string{"a", "b"}, Leases: map[int]string{}}
	if !under.NeedsLeases(4) {
		t.Fatal("an agent under its quota does not ask for the lease table")
	}
	plan := queue.Rebalance(4, []string{"a", "b"}, nil)
	first := under.Step(4)
	var mine, theirs []int
	for p := range 4 {
		if plan[p] == "a" {
			mine = append(mine, p)
		} else {
			theirs = append(theirs, p)
		}
	}
	if !slices.Equal(first.Take, mine) {
		t.Errorf("first reading: Take = %v, want only the planned %v", first.Take, mine)
	}
	under.Orphans = first.Orphans
	second := under.Step(4)
	if want := append(slices.Clone(mine), theirs...); !slices.Equal(second.Take, want) {
		t.Errorf("second reading: Take = %v, want the planned %v, then the orphans left to b %v", second.Take, mine, theirs)
	}

	// A partition a drains, and one a live b holds, are not taken; a lease
	// of a's own on a partition it neither holds nor drains (a restart) is
	// an orphan, and so is a lease of an agent not live.
	v := queue.AgentView{Self: "a", Agents: []string{"a", "b"}, Handing: []int{mine[0]},
		Leases: map[int]string{mine[0]: "a", theirs[0]: "b", mine[1]: "dead", theirs[1]: "a"}}
	st := v.Step(4)
	if slices.Contains(st.Take, mine[0]) || slices.Contains(st.Take, theirs[0]) {
		t.Errorf("Take = %v includes the partition a drains (%d) or one b holds (%d)", st.Take, mine[0], theirs[0])
	}
	if !st.Orphans[mine[1]] || !st.Orphans[theirs[1]] || st.Orphans[mine[0]] || st.Orphans[theirs[0]] {
		t.Errorf("Orphans = %v, want %d and %d only", st.Orphans, mine[1], theirs[1])
	}
}
