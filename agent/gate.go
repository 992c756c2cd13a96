package agent

import (
	"context"
	"sync"
	"time"
)

// gate counts the jobs an agent holds (delivered, not yet acked or naked).
//
// Fetch loops pull in one of two ways. A loop that knows its consumer has a
// backlog reserves room first (reserve) and then pulls without waiting, so
// it never overshoots the capacity; reservations are granted in FIFO order,
// at least min at a time, which keeps pulls batched and lets no loop starve
// another. A loop with no known backlog only waits until there is some room
// (wait) and then long-polls for one message (the anonymous loop: for as
// many as it has free workers), counting each on arrival (add): such
// arrivals may overshoot the capacity by at most one per partition loop
// and the pool's free workers for the anonymous loop, which never leaves a
// loop holding a reservation while it long-polls an empty partition.
type gate struct {
	mu    sync.Mutex
	cap   int
	used  int // held jobs plus granted reservations
	resv  int // granted reservations not yet settled
	queue []*reservation
	ch    chan struct{} // closed and replaced whenever a held job ends (waitChange)
}

type reservation struct {
	min, max int
	got      int
	ch       chan struct{} // closed once got is set
}

func newGate(capacity int) *gate { return &gate{cap: capacity} }

// wait blocks until it is this caller's turn in line and the gate has
// room, without taking any; it reports false when ctx ended first.
func (g *gate) wait(ctx context.Context) bool {
	return g.reserveAt(ctx, 1, 0) == 0 && ctx.Err() == nil
}

// reserve takes room for up to hi jobs, waiting in line until at least lo
// (at most hi and the capacity, at least 1) are free. It returns how many
// it took, or 0 when ctx ended first. Settle every reservation with settle.
func (g *gate) reserve(ctx context.Context, lo, hi int) int {
	hi = max(hi, 1)
	return g.reserveAt(ctx, max(min(lo, hi), 1), hi)
}

// reserveAt is reserve with lo and hi as given; hi 0 waits for a turn
// without taking room.
func (g *gate) reserveAt(ctx context.Context, lo, hi int) int {
	g.mu.Lock()
	if hi > 0 {
		// Never ask for more than the whole gate (read under the lock:
		// the adaptive capacity moves).
		lo = max(min(lo, g.cap), 1)
	}
	if free := g.cap - g.used; len(g.queue) == 0 && free >= lo {
		n := min(free, hi)
		g.used += n
		g.resv += n
		g.mu.Unlock()
		return n
	}
	r := &reservation{min: lo, max: hi, ch: make(chan struct{})}
	g.queue = append(g.queue, r)
	g.mu.Unlock()
	select {
	case <-r.ch:
		return r.got
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-r.ch:
		// Granted as ctx ended: hand the room on.
		g.used -= r.got
		g.resv -= r.got
		g.grantLocked()
	default:
		for i, q := range g.queue {
			if q == r {
				g.queue = append(g.queue[:i], g.queue[i+1:]...)
				break
			}
		}
		// Those behind r may fit now.
		g.grantLocked()
	}
	return 0
}

// waitChange blocks until a held job ends, d passes or ctx ends; it
// reports false only for ctx.
func (g *gate) waitChange(ctx context.Context, d time.Duration) bool {
	g.mu.Lock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
	ch := g.ch
	g.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

func (g *gate) add(n int) {
	g.mu.Lock()
	g.used += n
	g.mu.Unlock()
}

// settle ends a reservation of n of which used became held jobs; the rest
// is given back.
func (g *gate) settle(n, used int) {
	g.mu.Lock()
	g.resv -= n
	g.used -= n - used
	g.grantLocked()
	g.mu.Unlock()
}

// done gives back n held jobs that ended.
func (g *gate) done(n int) {
	g.mu.Lock()
	g.used -= n
	g.grantLocked()
	g.mu.Unlock()
}

// grantLocked serves the reservations in line, in order, and tells
// waitChange that something changed.
func (g *gate) grantLocked() {
	for len(g.queue) > 0 {
		r := g.queue[0]
		free := g.cap - g.used
		// The capacity may have shrunk since r joined the line (the
		// adaptive default follows run times): r never needs more than
		// the whole gate, or it would wait forever and block everyone
		// behind it.
		if free < min(r.min, max(g.cap, 1)) {
			break
		}
		r.got = min(free, r.max)
		g.used += r.got
		g.resv += r.got
		g.queue[0] = nil
		g.queue = g.queue[1:]
		close(r.ch)
	}
	if len(g.queue) == 0 {
		g.queue = nil
	}
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// held returns how many jobs are held (reservations not counted).
func (g *gate) held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.used - g.resv
}
