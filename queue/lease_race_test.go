package queue_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// contend runs try for every contender at once, each on its own connection
// as separate agents would be, and returns the winners and the losers'
// errors.
func contend(t *testing.T, b *testBundle, contenders int, try func(topo *queue.Topology, name string) (*queue.Lease, error)) (won []*queue.Lease, lost []error) {
	t.Helper()
	topos := make([]*queue.Topology, contenders)
	for i := range topos {
		_, js := connect(t, b.url)
		topo, err := queue.Open(testCtx(t), js, b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		topos[i] = topo
	}
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for i, topo := range topos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			l, err := try(topo, fmt.Sprintf("agent-%d", i))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				lost = append(lost, err)
			} else {
				won = append(won, l)
			}
		}()
	}
	close(start)
	wg.Wait()
	return won, lost
}

// TestLeaseContention: agents racing for one partition's lease: exactly
// one wins, every other is told who holds it.
func TestLeaseContention(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	for p := range b.cfg.Partitions {
		won, lost := contend(t, b, 6, func(topo *queue.Topology, name string) (*queue.Lease, error) {
			return topo.AcquireLease(testCtx(t), p, name)
		})
		if len(won) != 1 {
			t.Fatalf("partition %d: %d agents won the lease, want exactly 1: %+v", p, len(won), won)
		}
		for _, err := range lost {
			if !errors.Is(err, queue.ErrLeaseHeld) {
				t.Errorf("partition %d: a loser got %v, want ErrLeaseHeld", p, err)
			}
		}
		owners, err := b.topo.LeaseOwners(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if owners[p].Owner != won[0].Owner || owners[p].Revision != won[0].Revision {
			t.Errorf("partition %d: lease %+v, winner %+v", p, owners[p], won[0])
		}
	}
}

// TestTakeLease: a lease whose holder has gone is taken at once, without
// waiting for it to expire, but only if the holder last wrote it before it
// went, and by exactly one of the agents that race for it.
func TestTakeLease(t *testing.T) {
	t.Parallel()
	// A long TTL: nothing here may be explained by expiry.
	b := setup(t, queue.Config{Partitions: 4, LeaseTTL: time.Minute})
	ctx := testCtx(t)

	dead, err := b.topo.AcquireLease(ctx, 0, "dead")
	if err != nil {
		t.Fatal(err)
	}
	alive, err := b.topo.AcquireLease(ctx, 1, "alive")
	if err != nil {
		t.Fatal(err)
	}
	zombie, err := b.topo.AcquireLease(ctx, 2, "zombie")
	if err != nil {
		t.Fatal(err)
	}
	// Each stored write is stamped by the server before the call returns,
	// so every write so far is before now.
	wentAt := time.Now()
	// The zombie's registry entry expired, yet it renews its lease after
	// that: it is alive, and its lease is not to be taken.
	if err := b.topo.RenewLease(ctx, zombie); err != nil {
		t.Fatal(err)
	}
	gone := map[string]time.Time{"dead": wentAt, "zombie": wentAt}

	var held *queue.LeaseHeldError
	if _, err := b.topo.TakeLease(ctx, 1, "b", gone); !errors.As(err, &held) || held.Owner != "alive" {
		t.Errorf("take a live agent's lease: %v, want LeaseHeldError by alive", err)
	}
	if _, err := b.topo.TakeLease(ctx, 2, "b", gone); !errors.As(err, &held) || held.Owner != "zombie" {
		t.Errorf("take a lease renewed after its holder went: %v, want LeaseHeldError by zombie", err)
	}
	if _, err := b.topo.TakeLease(ctx, 3, "b", gone); err != nil {
		t.Errorf("take a free lease: %v", err)
	}

	// Partition 0: several survivors race for the dead agent's lease.
	won, lost := contend(t, b, 6, func(topo *queue.Topology, name string) (*queue.Lease, error) {
		return topo.TakeLease(testCtx(t), 0, name, gone)
	})
	if len(won) != 1 {
		t.Fatalf("%d agents took the dead agent's lease, want exactly 1: %+v", len(won), won)
	}
	for _, err := range lost {
		if !errors.Is(err, queue.ErrLeaseHeld) {
			t.Errorf("a loser got %v, want ErrLeaseHeld", err)
		}
	}
	// The dead agent, were it only slow, finds its lease lost.
	if err := b.topo.RenewLease(ctx, dead); !errors.Is(err, queue.ErrLeaseLost) {
		t.Errorf("renew of a taken lease: %v, want ErrLeaseLost", err)
	}
	if err := b.topo.RenewLease(ctx, alive); err != nil {
		t.Errorf("the live agent lost its lease: %v", err)
	}
	if err := b.topo.RenewLease(ctx, won[0]); err != nil {
		t.Errorf("the winner cannot renew: %v", err)
	}
}
