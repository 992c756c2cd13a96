package agent

import (
	"context"
	"testing"
	"time"
)

// reserveAsync starts g.reserve on its own goroutine; the channel yields its
// result.
func reserveAsync(ctx context.Context, g *gate, lo, hi int) <-chan int {
	ch := make(chan int, 1)
	go func() { ch <- g.reserve(ctx, lo, hi) }()
	return ch
}

// waitQueued polls until n callers are in line.
func waitQueued(t *testing.T, g *gate, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		g.mu.Lock()
		q := len(g.queue)
		g.mu.Unlock()
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d in line, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func recv(t *testing.T, ch <-chan int) int {
	t.Helper()
	select {
	case n := <-ch:
		return n
	case <-time.After(5 * time.Second):
		t.Fatal("reservation not granted")
		return 0
	}
}

func TestGateReserveBatchesInOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := newGate(8)
	if n := g.reserve(ctx, 2, 20); n != 8 {
		t.Fatalf("reserve on an empty gate = %d, want 8", n)
	}
	g.settle(8, 8) // eight jobs held
	if h := g.held(); h != 8 {
		t.Fatalf("held = %d, want 8", h)
	}
	first := reserveAsync(ctx, g, 4, 8)
	waitQueued(t, g, 1)
	second := reserveAsync(ctx, g, 1, 8)
	waitQueued(t, g, 2)

	// Two free: not enough for the head, and the one behind it waits its
	// turn rather than overtaking. done grants synchronously, so both are
	// still in line right after it.
	g.done(1)
	g.done(1)
	waitQueued(t, g, 2)
	g.done(1)
	g.done(1) // four free
	if n := recv(t, first); n != 4 {
		t.Fatalf("head got %d, want 4", n)
	}
	g.settle(4, 1) // the pull brought one job: three go back
	if n := recv(t, second); n != 3 {
		t.Fatalf("second got %d, want 3", n)
	}
	if h := g.held(); h != 5 {
		t.Fatalf("held = %d, want 5 (reservations are not held jobs)", h)
	}
}

func TestGateReserveCanceledHandsRoomOn(t *testing.T) {
	t.Parallel()
	g := newGate(4)
	g.add(4)
	ctx, cancel := context.WithCancel(context.Background())
	head := reserveAsync(ctx, g, 4, 4)
	waitQueued(t, g, 1)
	next := reserveAsync(context.Background(), g, 1, 1)
	waitQueued(t, g, 2)
	g.done(1)
	cancel()
	if n := recv(t, head); n != 0 {
		t.Fatalf("canceled reserve = %d, want 0", n)
	}
	if n := recv(t, next); n != 1 {
		t.Fatalf("next got %d, want 1", n)
	}
}

func TestGateWaitTakesNoRoom(t *testing.T) {
	t.Parallel()
	g := newGate(2)
	g.add(2)
	ctx := context.Background()
	done := make(chan bool, 2)
	for range 2 {
		go func() { done <- g.wait(ctx) }()
	}
	waitQueued(t, g, 2)
	g.done(1)
	for range 2 {
		select {
		case ok := <-done:
			if !ok {
				t.Fatal("wait = false")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("waiters not woken by room")
		}
	}
	if h := g.held(); h != 1 {
		t.Fatalf("held = %d, want 1", h)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	g.add(1)
	if g.wait(cctx) {
		t.Fatal("wait on a full gate with a canceled ctx = true")
	}
}

// A reservation that joined the line while the capacity was larger must
// still be served once the capacity shrinks below what it asked for at
// least: the adaptive capacity moves while jobs wait.
func TestGateShrinkServesWaitingReservation(t *testing.T) {
	g := newGate(32)
	ctx := context.Background()
	if n := g.reserve(ctx, 32, 32); n != 32 {
		t.Fatalf("reserved %d, want 32", n)
	}
	ch := reserveAsync(ctx, g, 8, 8)
	waitQueued(t, g, 1)
	g.setCap(4)
	g.settle(32, 0)
	if n := recv(t, ch); n < 1 || n > 4 {
		t.Fatalf("got %d after the shrink, want 1-4", n)
	}
}
