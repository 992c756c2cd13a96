package pool

import (
	"context"
	"errors"
	"time"

	"github.com/procfleet/procfleet/worker"
)

// Request says what a checkout needs.
type Request struct {
	// Session is the session the job belongs to; "" is an anonymous job,
	// which takes any idle worker, preferring those with fewest sessions.
	Session string
	// RequireSession makes a checkout whose session lost its worker (and
	// with it the session's state) fail with ErrSessionLost instead of
	// rebinding the session to a fresh worker.
	RequireSession bool
}

// CallInfo describes where Do ran a call.
type CallInfo struct {
	WorkerID   string
	PID        int
	NewSession bool          // the call was the session's first on that worker
	Wait       time.Duration // time spent waiting for the worker
}

type ticketState uint8

const (
	tsQueued   ticketState = iota // in a line
	tsGranted                     // a worker is assigned, Wait has not taken it
	tsFailed                      // decided with an error, Wait has not taken it
	tsDone                        // Wait returned
	tsCanceled                    // Cancel gave it up
)

type ticketWhere uint8

const (
	whereNone ticketWhere = iota
	whereAny              // Pool.anyQ: anonymous jobs and first jobs of unbound sessions
	whereSess             // its session's own line
)

// Ticket is a place in line for a worker, taken by Reserve. A ticket is used
// by one goroutine: Wait once, and Cancel when giving up.
type Ticket struct {
	l       *Lease // the lease this ticket turns into (they share one allocation)
	sess    *session
	session string
	require bool
	seq     uint64 // reservation order, to arbitrate between lines
	at      int64  // when it started waiting (pool clock); 0 if it never did
	state   ticketState
	where   ticketWhere
	err     error
	ch      chan struct{} // closed when decided; only made for tickets that wait

	prev, next *Ticket
}

// Reserve takes a place in line at once, so that a caller reserving in
// message order keeps each session's jobs in FIFO order; Ticket.Wait then
// waits for the worker. It fails at once, with a *CheckoutError, only with
// ErrPoolStopped, ErrPoolSaturated or ErrTooManySessions; any other outcome
// comes from Wait.
func (p *Pool) Reserve(req Request) (*Ticket, error) {
	l := &Lease{p: p}
	if _, err := p.reserve(req, l); err != nil {
		return nil, err
	}
	return &l.tk, nil
}

// Checkout is Reserve followed by Wait.
func (p *Pool) Checkout(ctx context.Context, req Request) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		p.checkoutErrors.Add(1)
		return nil, &CheckoutError{Reason: ErrCheckoutTimeout, Session: req.Session, Err: err}
	}
	l := &Lease{p: p}
	granted, err := p.reserve(req, l)
	if err != nil {
		return nil, err
	}
	if granted {
		// Nobody else knows this ticket: no lock needed to close it.
		l.tk.state = tsDone
		return p.handOut(l)
	}
	return l.tk.Wait(ctx)
}

// Do checks out a worker for req, runs c on it and releases it. A checkout
// failure is a *CheckoutError (the call did not run); a call failure is the
// *worker.Error from Lease.Call (the worker has been removed and replaced).
func (p *Pool) Do(ctx context.Context, req Request, c *worker.Call) (worker.Result, CallInfo, error) {
	l, err := p.Checkout(ctx, req)
	if err != nil {
		return worker.Result{}, CallInfo{}, err
	}
	res, err := l.Call(ctx, c)
	info := CallInfo{WorkerID: l.w.id, PID: l.w.pid, NewSession: c.NewSession, Wait: l.wait}
	l.Release()
	return res, info, err
}

// reserve links l's ticket into line, or assigns a worker at once and
// reports granted.
func (p *Pool) reserve(req Request, l *Lease) (granted bool, err error) {
	t := &l.tk
	t.l = l
	t.session = req.Session
	t.require = req.RequireSession && req.Session != ""

	p.mu.Lock()
	if p.state != stRunning {
		var cause error
		if p.state == stNew {
			cause = errNotStarted
		}
		p.mu.Unlock()
		return false, p.reserveErr(ErrPoolStopped, req.Session, cause)
	}
	if p.nWaiters >= p.cfg.MaxWaiters {
		p.mu.Unlock()
		return false, p.reserveErr(ErrPoolSaturated, req.Session, nil)
	}
	p.seq++
	t.seq = p.seq

	if req.Session == "" {
		if p.anyQ.empty() {
			if W := p.pickIdleLocked(true); W != nil {
				p.assignLocked(l, nil, W)
				t.state = tsGranted
				p.mu.Unlock()
				return true, nil
			}
		}
		t.at = p.now()
		t.state = tsQueued
		t.where = whereAny
		t.ch = make(chan struct{})
		p.anyQ.push(t)
		p.nWaiters++
		p.demandLocked(t.at)
		p.mu.Unlock()
		return false, nil
	}

	s := p.sessions[req.Session]
	if s == nil {
		if len(p.sessions) >= p.cfg.MaxSessions {
			p.mu.Unlock()
			return false, p.reserveErr(ErrTooManySessions, req.Session, nil)
		}
		s = &session{id: req.Session}
		p.sessions[req.Session] = s
	}
	p.idleSessions.remove(s)
	now := p.now()
	t.sess = s
	t.at = now
	t.state = tsQueued
	t.where = whereSess
	s.q.push(t)
	p.nWaiters++
	if s.active == nil && s.inAny == nil {
		p.advanceSessionLocked(s, now)
	}
	switch t.state {
	case tsQueued:
		t.ch = make(chan struct{})
	case tsGranted:
		granted = true
	}
	p.mu.Unlock()
	return granted, nil
}

func (p *Pool) reserveErr(reason error, session string, cause error) error {
	p.checkoutErrors.Add(1)
	return &CheckoutError{Reason: reason, Session: session, Err: cause}
}

// Wait blocks until a worker is handed over, the checkout fails, or ctx ends
// (a *CheckoutError with Reason ErrCheckoutTimeout that also matches ctx's
// error). The worker is validated before it is returned; a worker that fails
// validation is removed and replaced, and Wait reports ErrWorkerDead or
// ErrWorkerBroken.
func (t *Ticket) Wait(ctx context.Context) (*Lease, error) {
	l := t.l
	p := l.p
	p.mu.Lock()
	if t.state == tsQueued {
		ch := t.ch
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
		}
		p.mu.Lock()
		if t.state == tsQueued {
			p.withdrawLocked(t, p.now())
			t.state = tsDone
			p.mu.Unlock()
			p.checkoutErrors.Add(1)
			return nil, &CheckoutError{Reason: ErrCheckoutTimeout, Session: t.session, Err: ctx.Err()}
		}
	}
	switch t.state {
	case tsGranted:
		t.state = tsDone
		p.mu.Unlock()
	case tsFailed:
		t.state = tsDone
		p.mu.Unlock()
		return nil, t.err
	default:
		cause := errTicketUsed
		if t.state == tsCanceled {
			cause = context.Canceled
		}
		p.mu.Unlock()
		p.checkoutErrors.Add(1)
		return nil, &CheckoutError{Reason: ErrCheckoutTimeout, Session: t.session, Err: cause}
	}
	if err := ctx.Err(); err != nil {
		// Handed over as ctx ended: give the worker back untouched rather
		// than let a doomed call kill it.
		p.checkin(l, nil)
		p.checkoutErrors.Add(1)
		return nil, &CheckoutError{Reason: ErrCheckoutTimeout, Session: t.session, Err: err}
	}
	return p.handOut(l)
}

// Cancel gives up the place in line, or the worker if one was handed over
// and Wait has not returned it. It is safe to call at any time, also after
// Wait.
func (t *Ticket) Cancel() {
	p := t.l.p
	p.mu.Lock()
	switch t.state {
	case tsQueued:
		p.withdrawLocked(t, p.now())
		t.state = tsCanceled
		p.mu.Unlock()
	case tsGranted:
		t.state = tsCanceled
		p.mu.Unlock()
		p.checkin(t.l, nil)
	case tsFailed:
		t.state = tsCanceled
		p.mu.Unlock()
	default:
		p.mu.Unlock()
	}
}

// handOut validates the worker assigned to l (outside the lock: Validate
// asks the kernel) and returns l, or removes the worker and reports why.
func (p *Pool) handOut(l *Lease) (*Lease, error) {
	W := l.w
	err := W.w.Validate()
	if err == nil {
		p.checkouts.Add(1)
		return l, nil
	}
	reason := ErrWorkerBroken
	if errors.Is(err, worker.ErrDead) || errors.Is(err, worker.ErrStopped) {
		reason = ErrWorkerDead
	}
	if lost := p.checkin(l, err); lost && l.tk.require {
		reason = ErrSessionLost
	}
	p.checkoutErrors.Add(1)
	return nil, &CheckoutError{Reason: reason, WorkerID: W.id, PID: W.pid, Session: l.tk.session, Err: err}
}

// assignLocked gives W to l (binding l's session to W if unbound).
func (p *Pool) assignLocked(l *Lease, s *session, W *pw) {
	l.w = W
	if s != nil {
		if s.w == nil {
			p.bindLocked(s, W)
		}
		W.pending.remove(s)
		s.active = l
		l.newSession = !s.seen
	}
	p.setStateLocked(W, wBusy)
}

// grantLocked hands W to the waiting ticket t and wakes its waiter.
func (p *Pool) grantLocked(t *Ticket, W *pw, now int64) {
	p.unlinkLocked(t)
	l := t.l
	p.assignLocked(l, t.sess, W)
	if t.at != 0 {
		wait := time.Duration(now - t.at)
		l.wait = wait
		p.waitTotal += wait
		if wait > p.waitMax {
			p.waitMax = wait
		}
	}
	t.state = tsGranted
	if t.ch != nil {
		close(t.ch)
	}
}

// failLocked decides t with an error and wakes its waiter.
func (p *Pool) failLocked(t *Ticket, reason, cause error, workerID string, pid int) {
	p.unlinkLocked(t)
	t.state = tsFailed
	t.err = &CheckoutError{Reason: reason, WorkerID: workerID, PID: pid, Session: t.session, Err: cause}
	p.checkoutErrors.Add(1)
	if t.ch != nil {
		close(t.ch)
	}
}

// unlinkLocked takes t out of whatever line it is in.
func (p *Pool) unlinkLocked(t *Ticket) {
	switch t.where {
	case whereAny:
		p.anyQ.remove(t)
		if s := t.sess; s != nil && s.inAny == t {
			s.inAny = nil
		}
	case whereSess:
		t.sess.q.remove(t)
	default:
		return
	}
	t.where = whereNone
	p.nWaiters--
}

// withdrawLocked takes a waiting ticket out of line for good (ctx ended or
// Cancel) and lets its session's next ticket move up.
func (p *Pool) withdrawLocked(t *Ticket, now int64) {
	s := t.sess
	if s == nil {
		p.unlinkLocked(t)
		return
	}
	switch t.where {
	case whereAny:
		// s is unbound and fresh: its next ticket takes t's place in the
		// anonymous line.
		prev := t.prev
		p.unlinkLocked(t)
		if n := s.q.head; n != nil {
			s.q.remove(n)
			p.anyQ.insertAfter(prev, n)
			n.where = whereAny
			s.inAny = n
		} else {
			p.parkSessionLocked(s, now)
		}
	case whereSess:
		p.unlinkLocked(t)
		if s.active == nil && s.inAny == nil && s.q.empty() {
			if s.w != nil {
				s.w.pending.remove(s)
			}
			p.parkSessionLocked(s, now)
		}
	}
}

// demandLocked starts a cold slot of a lazy pool when the anonymous line is
// longer than the starts already under way.
func (p *Pool) demandLocked(now int64) {
	if !p.cfg.Lazy || p.anyQ.n <= p.nStarting {
		return
	}
	for _, s := range p.slots {
		if s.cold {
			s.cold = false
			s.restartAt = 0
			p.startDueLocked(now)
			return
		}
	}
}

// pickIdleLocked returns the idle worker that may take a new session (or,
// with anonymous, an anonymous job) and holds the fewest sessions, or nil.
// A retiring worker takes an anonymous job when no other worker is idle:
// it binds nothing, and the worker may wait long for its sessions to end.
// It takes a new session only when every worker of the pool is retiring
// (allRetiringLocked).
func (p *Pool) pickIdleLocked(anonymous bool) *pw {
	var best, retiring *pw
	for _, s := range p.slots {
		W := s.w
		if W == nil || W.state != wIdle {
			continue
		}
		if W.retiring {
			if len(W.sessions) > 0 && retiring == nil {
				retiring = W
			}
			continue
		}
		if best == nil || len(W.sessions) < len(best.sessions) {
			best = W
			if len(W.sessions) == 0 {
				break
			}
		}
	}
	if best == nil && retiring != nil && (anonymous || p.allRetiringLocked()) {
		return retiring
	}
	return best
}

// allRetiringLocked reports whether every slot holds a retiring worker:
// no worker could take a new session, and none is starting that could. A
// retiring worker then takes new sessions too (its retirement waits for
// them as well), since otherwise a new session would wait until one of the
// retiring workers' sessions ends, up to SessionIdleTTL.
func (p *Pool) allRetiringLocked() bool {
	for _, s := range p.slots {
		if s.w == nil || !s.w.retiring {
			return false
		}
	}
	return true
}
