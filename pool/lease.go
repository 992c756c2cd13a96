package pool

import (
	"context"
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
