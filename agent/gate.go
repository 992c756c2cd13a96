package agent

import (
	"context"
	"sync"
)

// gate counts the jobs an agent holds (delivered, not yet acked or naked).
// Fetch loops wait until it has room before pulling; arrivals may overshoot
// the capacity by at most one batch per loop, which keeps every loop simple
// and never leaves a loop holding a reservation while it long-polls an empty
// partition.
type gate struct {
	mu   sync.Mutex
	cap  int
	used int
	ch   chan struct{} // closed and replaced whenever room appears
}

func newGate(capacity int) *gate { return &gate{cap: capacity} }

// wait blocks until the gate has room and returns how much, or 0 when ctx
// ends first.
func (g *gate) wait(ctx context.Context) int {
	for {
		g.mu.Lock()
		if free := g.cap - g.used; free > 0 {
			g.mu.Unlock()
			return free
		}
		if g.ch == nil {
			g.ch = make(chan struct{})
		}
		ch := g.ch
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0
		}
	}
}

func (g *gate) add(n int) {
	g.mu.Lock()
	g.used += n
	g.mu.Unlock()
}

func (g *gate) done(n int) {
	g.mu.Lock()
	g.used -= n
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
	g.mu.Unlock()
}

func (g *gate) held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.used
}
