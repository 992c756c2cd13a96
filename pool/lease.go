package pool

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/worker"
)

// Lease is a worker checked out of the pool. It is used by one goroutine
// and must be given back with Release (or Remove) exactly once; extra calls
// are ignored.
type Lease struct {
	tk         Ticket // the place in line this lease came from
	p          *Pool
	w          *pw
	newSession bool
	wait       time.Duration
	calls      int
	err        error // first worker-level error of a call: the worker is gone
	released   atomic.Bool
}

// Worker returns the leased worker.
func (l *Lease) Worker() *worker.Worker { return l.w.w }

// WorkerID returns the leased worker's id.
func (l *Lease) WorkerID() string { return l.w.id }

// PID returns the leased worker's process id.
func (l *Lease) PID() int { return l.w.pid }

// Session returns the session the lease was checked out for ("" if none).
func (l *Lease) Session() string { return l.tk.session }

// NewSession reports whether the lease's first call is the session's first
// job on this worker: the worker holds no state for it yet.
func (l *Lease) NewSession() bool { return l.newSession }

// Waited returns how long the checkout waited for the worker.
func (l *Lease) Waited() time.Duration { return l.wait }

// Call runs c on the leased worker. It sets c.Session and c.NewSession from
// the lease (NewSession only on the lease's first call). The error is the
// worker's: nil means the worker answered (OK or an application error) and
// stays; a non-nil *worker.Error means the worker is dead, and Release will
// remove and replace it.
func (l *Lease) Call(ctx context.Context, c *worker.Call) (worker.Result, error) {
	if l.released.Load() {
		return worker.Result{}, ErrLeaseReleased
	}
	c.Session = l.tk.session
	c.NewSession = l.newSession && l.calls == 0
	l.calls++
	res, err := l.w.w.Call(ctx, c)
	if err != nil && l.err == nil {
		l.err = err
	}
	return res, err
}

// Release checks the worker back in: it goes to the next waiter, idles, or
// is recycled or (after a failed call) removed and replaced. Idempotent.
func (l *Lease) Release() { l.p.checkin(l, nil) }

// Remove checks the worker in and kills and replaces it: the holder judged
// it bad (reason, which may be nil, is logged and kept in Stats.LastError).
// The session's state on it is lost. Idempotent with Release.
func (l *Lease) Remove(reason error) {
	if reason == nil {
		reason = errRemovedByHolder
	}
	l.p.checkin(l, reason)
}

// checkin takes l's worker back. It reports whether l's session had state
// on the worker that is now lost with it.
func (p *Pool) checkin(l *Lease, removeErr error) (lost bool) {
	if !l.released.CompareAndSwap(false, true) {
		return false
	}
	W := l.w
	reason := removeErr
	if reason == nil {
		reason = l.err
	}
	hard := false
	if reason == nil && p.cfg.MaxRSS > 0 && l.calls > 0 {
		if n, err := W.w.RSS(); err == nil && n > p.cfg.MaxRSS {
			hard = true
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	s := l.tk.sess
	if s != nil {
		if s.active == l {
			s.active = nil
		}
		if s.w == W && l.calls > 0 {
			s.seen = true
		}
	}
	if W.removed {
		// The pool let go of the worker meanwhile (it is shutting down).
		if s != nil && s.active == nil {
			p.advanceSessionLocked(s, now)
		}
		return false
	}
	W.lastUsed = now
	W.jobs += l.calls
	switch {
	case reason != nil:
		lost = s != nil && s.w == W && s.seen
		p.removeLocked(W, reason, s, kindRemove, now)
	case hard:
		p.removeLocked(W, fmt.Errorf("pool: worker over MaxRSS (%d bytes)", p.cfg.MaxRSS), nil, kindHardRSS, now)
	default:
		if p.cfg.MaxJobs > 0 && W.jobs >= p.cfg.MaxJobs {
			W.retiring = true
		}
		if s != nil {
			// Before freeing W, so that the session's next job is in W's
			// pending list and keeps its turn.
			p.advanceSessionLocked(s, now)
		}
		p.freeWorkerLocked(W, now)
		return false
	}
	if s != nil && s.active == nil {
		p.advanceSessionLocked(s, now)
	}
	return lost
}
