package pool

import (
	"time"
)

// Stats is a snapshot of the pool.
type Stats struct {
	Size int
	// Workers by state. Starting also counts empty slots waiting out a
	// restart backoff; Stopping counts removed or retired workers not yet
	// reaped.
	Starting, Idle, Busy, Stopping int
	Sessions                       int    // live sessions (including lost ones not yet reported or expired)
	Waiters                        int    // queued checkouts
	Restarts                       uint64 // replacement workers started (beyond each slot's first)
	StartFailures                  uint64
	ConsecutiveFailures            int
	Degraded                       bool          // crash loop: ConsecutiveFailures >= DegradedAfter
	Backoff                        time.Duration // current restart backoff; 0 when starts succeed
	LastError                      string        // last start failure or removal reason
	Checkouts, CheckoutErrors      uint64
	Removed                        uint64 // workers removed: crash, protocol, timeout, health, by the lease holder
	Recycled                       uint64 // workers retired by MaxJobs, TTL, IdleTTL or MaxRSS
	WaitTotal                      time.Duration
	WaitMax                        time.Duration
	Workers                        []WorkerStats
}

// WorkerStats describes one worker, or one slot waiting for its worker.
type WorkerStats struct {
	ID        string
	PID       int    // 0 while starting
	State     string // "starting", "backoff", "idle", "busy", "stopping"
	Retiring  bool   // a soft limit was reached: it serves its bound sessions only
	Jobs      int
	Sessions  int
	StartedAt time.Time
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := Stats{
		Size:                p.cfg.Size,
		Sessions:            len(p.sessions),
		Waiters:             p.nWaiters,
		Restarts:            p.restarts,
		StartFailures:       p.startFailures,
		ConsecutiveFailures: p.consecutive,
		Degraded:            p.consecutive >= p.cfg.DegradedAfter,
		Backoff:             p.backoff,
		LastError:           p.lastError,
		Checkouts:           p.checkouts.Load(),
		CheckoutErrors:      p.checkoutErrors.Load(),
		Removed:             p.removed,
		Recycled:            p.recycled,
		WaitTotal:           p.waitTotal,
		WaitMax:             p.waitMax,
		Workers:             make([]WorkerStats, 0, len(p.slots)+len(p.stopping)),
	}
	for _, sl := range p.slots {
		switch W := sl.w; {
		case W != nil:
			switch W.state {
			case wIdle:
				st.Idle++
			case wBusy:
				st.Busy++
			}
			st.Workers = append(st.Workers, p.workerStatsLocked(W))
		case sl.starting:
			st.Starting++
			st.Workers = append(st.Workers, WorkerStats{ID: sl.startID, State: "starting"})
		case !sl.cold && p.state == stRunning:
			st.Starting++
			st.Workers = append(st.Workers, WorkerStats{State: "backoff"})
		}
	}
	for W := range p.stopping {
		st.Stopping++
		st.Workers = append(st.Workers, p.workerStatsLocked(W))
	}
	return st
}

func (p *Pool) workerStatsLocked(W *pw) WorkerStats {
	return WorkerStats{
		ID:        W.id,
		PID:       W.pid,
		State:     W.state.String(),
		Retiring:  W.retiring,
		Jobs:      W.jobs,
		Sessions:  len(W.sessions),
		StartedAt: W.w.StartedAt(),
	}
}

// Waiting is Stats().Waiters without the rest: the checkouts waiting for a
// worker now. It is cheap enough for every job.
func (p *Pool) Waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nWaiters
}

// Free is Stats().Idle less Stats().Waiters, without the rest: the idle
// workers no waiting checkout will take (negative when more wait than are
// idle). It is cheap enough for every pull.
func (p *Pool) Free() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := 0
	for _, sl := range p.slots {
		if W := sl.w; W != nil && W.state == wIdle {
			idle++
		}
	}
	return idle - p.nWaiters
}
