package queue_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

func TestLeases(t *testing.T) {
	t.Parallel()
	// The default LeaseTTL (6s): nothing here tests expiry, and a lease
	// that expired during a stall of a loaded machine would fail the
	// checks of a lease still held (TestLeaseExpiry covers expiry).
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)

	la, err := b.topo.AcquireLease(ctx, 1, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.topo.AcquireLease(ctx, 1, "agent-b")
	var held *queue.LeaseHeldError
	if !errors.Is(err, queue.ErrLeaseHeld) || !errors.As(err, &held) || held.Owner != "agent-a" || held.Partition != 1 {
		t.Fatalf("second owner: %v, want LeaseHeldError by agent-a", err)
	}

	rev := la.Revision
	if err := b.topo.RenewLease(ctx, la); err != nil {
		t.Fatal(err)
	}
	if la.Revision <= rev {
		t.Errorf("renew did not advance the revision: %d -> %d", rev, la.Revision)
	}
	stale := &queue.Lease{Partition: 1, Owner: "agent-a", Revision: rev}
	if err := b.topo.RenewLease(ctx, stale); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("renew with a stale revision: %v, want ErrLeaseLost", err)
	}
	if err := b.topo.ReleaseLease(ctx, stale); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("release with a stale revision: %v, want ErrLeaseLost", err)
	}

	// The same owner takes its own lease over (a restart under the same
	// name), at a new revision.
	again, err := b.topo.AcquireLease(ctx, 1, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	if again.Revision <= la.Revision {
		t.Errorf("takeover revision %d not after %d", again.Revision, la.Revision)
	}
	if err := b.topo.RenewLease(ctx, la); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("renew of the superseded lease: %v, want ErrLeaseLost", err)
	}

	lb, err := b.topo.AcquireLease(ctx, 2, "agent-b")
	if err != nil {
		t.Fatal(err)
	}
	owners, err := b.topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(owners) != 2 || owners[1].Owner != "agent-a" || owners[2].Owner != "agent-b" || owners[2].Revision != lb.Revision {
		t.Errorf("LeaseOwners = %+v", owners)
	}

	// Release frees the partition at once.
	if err := b.topo.ReleaseLease(ctx, lb); err != nil {
		t.Fatal(err)
	}
	if _, err := b.topo.AcquireLease(ctx, 2, "agent-c"); err != nil {
		t.Errorf("acquire after release: %v", err)
	}

	if _, err := b.topo.AcquireLease(ctx, 4, "agent-a"); err == nil {
		t.Error("lease of partition 4 of 4 granted")
	}
}

// TestLeaseExpiry: a lease that is not renewed expires after the bucket
// TTL; another owner can then create it, and the old owner's renewal fails.
func TestLeaseExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, LeaseTTL: time.Second})
	ctx := testCtx(t)

	// The TTL runs from the lease's own write, so the clock starts before
	// it: started after, the lower bound below would count the time the
	// writes took (long on a loaded machine) against the server.
	start := time.Now()
	la, err := b.topo.AcquireLease(ctx, 0, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	// Keep renewing a second lease past one TTL to show renewal extends it.
	lk, err := b.topo.AcquireLease(ctx, 1, "keeper")
	if err != nil {
		t.Fatal(err)
	}
	var lb *queue.Lease
	eventually(t, 10*time.Second, func() error {
		if err := b.topo.RenewLease(ctx, lk); err != nil {
			return fmt.Errorf("keeper lost its renewed lease: %w", err)
		}
		lb, err = b.topo.AcquireLease(ctx, 0, "agent-b")
		return err
	})
	if waited := time.Since(start); waited < 900*time.Millisecond {
		t.Errorf("lease expired after %s, before its TTL", waited)
	}
	if err := b.topo.RenewLease(ctx, la); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("renew after expiry: %v, want ErrLeaseLost", err)
	}
	if err := b.topo.RenewLease(ctx, lk); err != nil {
		t.Errorf("renewed lease expired: %v", err)
	}
	owners, err := b.topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if owners[0].Owner != "agent-b" || owners[0].Revision != lb.Revision {
		t.Errorf("owners after expiry: %+v", owners)
	}
}

func TestAgents(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, AgentTTL: time.Second})
	ctx := testCtx(t)

	a := &queue.AgentInfo{Name: "zeta", Host: "h1", PID: 10, Workers: 4, Busy: 1, Idle: 3, Partitions: []int{0}}
	if err := b.topo.Heartbeat(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.Heartbeat(ctx, &queue.AgentInfo{Name: "alpha", Workers: 2}); err != nil {
		t.Fatal(err)
	}
	list, err := b.topo.ListAgents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "zeta" || list[1].Workers != 4 ||
		list[1].UpdatedAt.IsZero() || len(list[1].Partitions) != 1 {
		t.Fatalf("ListAgents = %+v", list)
	}
	if err := b.topo.RemoveAgent(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.RemoveAgent(ctx, "never-was"); err != nil {
		t.Errorf("remove unknown agent: %v", err)
	}
	if err := b.topo.Heartbeat(ctx, &queue.AgentInfo{}); err == nil {
		t.Error("heartbeat without a name succeeded")
	}
	// zeta stops heartbeating and expires.
	eventually(t, 10*time.Second, func() error {
		list, err := b.topo.ListAgents(ctx)
		if err != nil {
			return err
		}
		if len(list) != 0 {
			return fmt.Errorf("agents still listed: %+v", list)
		}
		return nil
	})
}

// TestLeaseOwnersSkipForeignKeys: keys in the leases bucket that are no
// lease of this queue (anyone with the bucket's rights can write one: a
// client of the embedded server, which has no users) are left out of
// LeaseOwners instead of failing it, which failed `dispatcher status` and
// every rebalance that read the lease table until the key expired.
func TestLeaseOwnersSkipForeignKeys(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	if _, err := b.topo.AcquireLease(ctx, 2, "agent-a"); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"junk", "p-x", "p-99", "p-02", "gpu.p-1"} {
		if _, err := b.topo.Leases.Put(ctx, key, []byte("ghost")); err != nil {
			t.Fatal(err)
		}
	}
	owners, err := b.topo.LeaseOwners(ctx)
	if err != nil {
		t.Fatalf("LeaseOwners with foreign keys in the bucket: %v", err)
	}
	if len(owners) != 1 || owners[2].Owner != "agent-a" {
		t.Fatalf("LeaseOwners = %+v, want only partition 2 of agent-a", owners)
	}
}

// TestRegister: an agent's first entry is written only over the revision
// it read (0: none): over an entry written since, it is
// ErrAgentEntryChanged, and the entry is left as it was; over a removed
// one, at the removal's revision, it is written.
func TestRegister(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2})
	ctx := testCtx(t)
	first := &queue.AgentInfo{Name: "twin", Host: "h1", PID: 1}
	if err := b.topo.Register(ctx, first, 0); err != nil {
		t.Fatalf("register under a free name: %v", err)
	}
	e, err := b.topo.Agents.Get(ctx, "twin")
	if err != nil {
		t.Fatal(err)
	}
	second := &queue.AgentInfo{Name: "twin", Host: "h2", PID: 2}
	if err := b.topo.Register(ctx, second, 0); !errors.Is(err, queue.ErrAgentEntryChanged) {
		t.Fatalf("register over an entry written since: %v, want ErrAgentEntryChanged", err)
	}
	if list, err := b.topo.ListAgents(ctx); err != nil || len(list) != 1 || list[0].Host != "h1" {
		t.Fatalf("after the refused register: %+v, %v; want h1's entry", list, err)
	}
	if err := b.topo.RemoveAgent(ctx, "twin"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.Register(ctx, second, e.Revision()); !errors.Is(err, queue.ErrAgentEntryChanged) {
		t.Fatalf("register over the put before a removal: %v, want ErrAgentEntryChanged", err)
	}
	w, err := b.topo.Agents.Watch(ctx, "twin")
	if err != nil {
		t.Fatal(err)
	}
	removed := <-w.Updates()
	_ = w.Stop()
	if removed == nil {
		t.Fatal("no removal marker")
	}
	if err := b.topo.Register(ctx, second, removed.Revision()); err != nil {
		t.Fatalf("register over the removal: %v", err)
	}
	if list, err := b.topo.ListAgents(ctx); err != nil || len(list) != 1 || list[0].Host != "h2" {
		t.Fatalf("after the register: %+v, %v; want h2's entry", list, err)
	}
}

// TestResumeLease: after a renewal whose answer was lost, the lease's
// latest revision may be that renewal, applied: ResumeLease takes it when
// it still names the owner, and reports ErrLeaseLost when someone else
// wrote after it or the lease is gone.
func TestResumeLease(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	l, err := b.topo.AcquireLease(ctx, 0, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	// The renewal the client never heard back from.
	applied, err := b.topo.Leases.Update(ctx, "p-0", []byte("agent-a"), l.Revision)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.topo.RenewLease(ctx, l); !errors.Is(err, queue.ErrLeaseLost) {
		t.Fatalf("renew behind its own applied write: %v, want ErrLeaseLost", err)
	}
	if err := b.topo.ResumeLease(ctx, l); err != nil || l.Revision != applied {
		t.Fatalf("resume: %v at revision %d, want nil at %d", err, l.Revision, applied)
	}
	if err := b.topo.RenewLease(ctx, l); err != nil {
		t.Fatalf("renew after resume: %v", err)
	}

	// Someone else wrote after it: lost.
	stale := *l
	if _, err := b.topo.Leases.Update(ctx, "p-0", []byte("agent-b"), l.Revision); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.ResumeLease(ctx, &stale); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("resume over agent-b's write: %v, want ErrLeaseLost", err)
	}
	// Gone: lost.
	gone, err := b.topo.AcquireLease(ctx, 1, "agent-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.topo.Leases.Delete(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.ResumeLease(ctx, gone); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("resume of a deleted lease: %v, want ErrLeaseLost", err)
	}
}
