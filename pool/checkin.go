package pool

// checkin takes l's worker back. It is the one path every lease ends on
// (Release, Remove, a failed validation, a grant nobody took), and it reads
// top to bottom:
//
//  1. Decide the worker's fate, outside the lock because it may read /proc:
//     a failed call or the holder's verdict removes it; a worker over
//     MaxRSS is recycled at once; otherwise it stays.
//  2. Settle the session: its job on the worker is over, and the worker now
//     holds its state if a call ran.
//  3. Apply the fate. A kept worker counts its jobs, turns retiring at
//     MaxJobs, lets the session's next job keep its turn, and is handed to
//     the next waiter or idles.
//  4. Let the session's next job move on if the worker went away.
//
// It reports whether l's session had state on the worker that is now lost
// with it.
func (p *Pool) checkin(l *Lease, removeErr error) (lost bool) {
	if !l.released.CompareAndSwap(false, true) {
		return false
	}
	W, s := l.w, l.tk.sess

	// 1. The worker's fate.
	reason := removeErr
	if reason == nil {
		reason = l.err
	}
	overRSS := reason == nil && l.calls > 0 && p.overMaxRSS(W)

	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()

	// 2. The session.
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
		p.nextSessionJobLocked(s, now)
		return false
	}

	// 3. Apply the fate.
	W.lastUsed = now
	W.jobs += l.calls
	switch {
	case reason != nil:
		lost = s != nil && s.w == W && s.seen
		p.removeLocked(W, reason, s, kindRemove, now)
	case overRSS:
		p.recycleOverRSSLocked(W, now)
	default:
		if l.calls > 0 {
			p.proveLocked(W)
		}
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

	// 4. The worker went away: the session's next job goes elsewhere.
	p.nextSessionJobLocked(s, now)
	return lost
}

// nextSessionJobLocked routes the next job of s, when s has no job running.
func (p *Pool) nextSessionJobLocked(s *session, now int64) {
	if s != nil && s.active == nil {
		p.advanceSessionLocked(s, now)
	}
}

// freeWorkerLocked is called whenever W (busy) becomes free: it hands W
// straight to the next waiter, or idles, retires or stops it.
func (p *Pool) freeWorkerLocked(W *pw, now int64) {
	if p.state != stRunning {
		p.retireLocked(W, false, now)
		return
	}
	if len(W.pendingEnds) > 0 {
		// session_end frames go out before the next job so that a session
		// rebound to this worker never has its new state dropped.
		p.startOpLocked(W, false)
		return
	}
	if W.retiring && len(W.sessions) == 0 {
		p.retireLocked(W, true, now)
		return
	}
	var t *Ticket
	if s := W.pending.head; s != nil {
		t = s.q.head
	}
	// A retiring worker still holds sessions here: it serves them, and
	// anonymous jobs meanwhile, which bind nothing to it; the first jobs of
	// new sessions in the line wait for another worker, unless there is
	// none (allRetiringLocked).
	a := p.anyQ.head
	if W.retiring && !p.allRetiringLocked() {
		for a != nil && a.session != "" {
			a = a.next
		}
	}
	if a != nil && (t == nil || a.seq < t.seq) {
		t = a
	}
	if t != nil {
		p.grantLocked(t, W, now)
		return
	}
	p.setStateLocked(W, wIdle)
	if p.cfg.IdleTTL > 0 && !W.retiring {
		p.wakeAtLocked(W.idleSince() + int64(p.cfg.IdleTTL))
	}
	if p.cfg.HealthInterval > 0 {
		p.wakeAtLocked(max(W.lastUsed, W.lastCheck) + int64(p.cfg.HealthInterval))
	}
}
