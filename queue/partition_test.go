package queue_test

import (
	"fmt"
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

func TestRendezvous(t *testing.T) {
	t.Parallel()
	if got := queue.Rendezvous(3, nil); got != "" {
		t.Errorf("Rendezvous with no agents = %q, want empty", got)
	}
	agents := []string{"a", "b", "c", "d"}
	reversed := []string{"d", "c", "b", "a"}
	for p := range 64 {
		if x, y := queue.Rendezvous(p, agents), queue.Rendezvous(p, reversed); x != y {
			t.Fatalf("partition %d: owner depends on order: %q vs %q", p, x, y)
		}
	}

	const partitions = 64
	before := queue.Assign(partitions, agents)
	total := 0
	for a, ps := range before {
		total += len(ps)
		// 64 over 4 agents: each should get a fair share, not a run.
		if len(ps) < 6 || len(ps) > 26 {
			t.Errorf("agent %s owns %d partitions, badly balanced: %v", a, len(ps), before)
		}
	}
	if total != partitions {
		t.Fatalf("assigned %d partitions, want %d", total, partitions)
	}

	// A join moves only partitions to the newcomer.
	after := queue.Assign(partitions, append(agents, "e"))
	owner := func(m map[string][]int) map[int]string {
		o := make(map[int]string)
		for a, ps := range m {
			for _, p := range ps {
				o[p] = a
			}
		}
		return o
	}
	ob, oa := owner(before), owner(after)
	for p := range partitions {
		if ob[p] != oa[p] && oa[p] != "e" {
			t.Errorf("partition %d moved from %s to %s on a join of e", p, ob[p], oa[p])
		}
	}
	if len(after["e"]) == 0 {
		t.Error("newcomer e got no partitions")
	}

	// A leave moves only the leaver's partitions.
	left := owner(queue.Assign(partitions, []string{"a", "b", "d"}))
	for p := range partitions {
		if ob[p] != "c" && ob[p] != left[p] {
			t.Errorf("partition %d moved from %s to %s when c left", p, ob[p], left[p])
		}
	}

	if got := queue.Assign(4, []string{"solo", "idle-never"}); len(got["solo"])+len(got["idle-never"]) != 4 {
		t.Errorf("Assign(4) = %v", got)
	}
	if got := queue.Assign(4, nil); len(got) != 0 {
		t.Errorf("Assign with no agents = %v, want empty", got)
	}
}
