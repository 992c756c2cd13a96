package pool

// session is the pool's view of one session: the worker it is bound to and
// its line of waiting checkouts. Guarded by Pool.mu.
type session struct {
	id     string
	w      *pw    // bound worker; nil while unbound
	seen   bool   // the bound worker has run a job of this session (so it holds state)
	active *Lease // the lease out for this session: one job at a time
	q      ticketQueue
	inAny  *Ticket // the session's head ticket while it waits in the anonymous line for a first worker

	// The bound worker went away holding this session's state. The next
	// checkout reports it once (ErrWorkerDead) unless reported already;
	// RequireSession checkouts keep failing with ErrSessionLost until a
	// plain checkout rebinds the session, EndSession or expiry.
	lost       bool
	reported   bool
	lostWorker string
	lostPID    int
	lostErr    error

	idleSince int64    // when it last became idle (pool clock)
	pend      sessLink // in its worker's pending list
	idle      sessLink // in Pool.idleSessions
}

func (p *Pool) bindLocked(s *session, W *pw) {
	s.w = W
	s.seen = false
	s.lost = false
	W.sessions[s] = struct{}{}
}

func (p *Pool) unbindLocked(s *session) {
	W := s.w
	if W == nil {
		return
	}
	delete(W.sessions, s)
	if len(W.sessions) == 0 {
		W.unboundAt = p.now()
	}
	W.pending.remove(s)
	s.w = nil
}

// advanceSessionLocked routes the head of s's line when none of s's jobs is
// running: report a loss, hand over the bound worker, wait for it, or join
// the anonymous line for a first worker. With nothing queued it parks s.
func (p *Pool) advanceSessionLocked(s *session, now int64) {
	for s.active == nil && s.inAny == nil {
		t := s.q.head
		if t == nil {
			p.parkSessionLocked(s, now)
			return
		}
		if s.w == nil && s.lost {
			if t.require {
				s.reported = true
				p.failLocked(t, ErrSessionLost, s.lostErr, s.lostWorker, s.lostPID)
				continue
			}
			if !s.reported {
				s.reported = true
				p.failLocked(t, ErrWorkerDead, s.lostErr, s.lostWorker, s.lostPID)
				continue
			}
			s.lost = false
		}
		if W := s.w; W != nil {
			if W.state == wIdle {
				p.grantLocked(t, W, now)
			} else {
				W.pending.push(s)
			}
			return
		}
		if p.anyQ.empty() {
			if W := p.pickIdleLocked(false); W != nil {
				p.grantLocked(t, W, now)
				return
			}
		}
		s.q.remove(t)
		p.anyQ.push(t)
		t.where = whereAny
		s.inAny = t
		p.demandLocked(now)
		return
	}
}

// parkSessionLocked puts s, with nothing running or queued, on the expiry
// list; an unbound session that lost nothing is simply forgotten.
func (p *Pool) parkSessionLocked(s *session, now int64) {
	if s.idle.in {
		return
	}
	if s.w == nil && !s.lost {
		delete(p.sessions, s.id)
		return
	}
	s.idleSince = now
	p.idleSessions.push(s)
	if p.cfg.SessionIdleTTL > 0 {
		p.wakeAtLocked(now + int64(p.cfg.SessionIdleTTL))
	}
}

// dropSessionLocked forgets s, whose worker (if any) gets session_end.
func (p *Pool) dropSessionLocked(s *session) {
	p.idleSessions.remove(s)
	if W := s.w; W != nil {
		p.unbindLocked(s)
		p.queueEndLocked(W, s.id)
	}
	delete(p.sessions, s.id)
}

// queueEndLocked arranges for session_end to reach W before its next job.
func (p *Pool) queueEndLocked(W *pw, id string) {
	if W.removed {
		return
	}
	W.pendingEnds = append(W.pendingEnds, id)
	if W.state == wIdle {
		p.startOpLocked(W, false)
	}
}

// EndSession ends session: it is unbound, its worker gets session_end, and
// a later checkout of it starts afresh (NewSession) on any worker. A job of
// the session running now finishes first; queued ones rebind. Unknown
// sessions are ignored.
func (p *Pool) EndSession(session string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.sessions[session]
	if s == nil {
		return
	}
	s.lost, s.reported = false, false
	if s.active == nil && s.inAny == nil && s.q.empty() {
		p.dropSessionLocked(s)
		return
	}
	if W := s.w; W != nil {
		p.unbindLocked(s)
		p.queueEndLocked(W, s.id)
	}
	if s.active == nil {
		p.advanceSessionLocked(s, p.now())
	}
}

// expireSessionsLocked ends the sessions idle for SessionIdleTTL and returns
// when the next one is due (0 if none).
func (p *Pool) expireSessionsLocked(now int64) int64 {
	if p.cfg.SessionIdleTTL <= 0 {
		return 0
	}
	ttl := int64(p.cfg.SessionIdleTTL)
	for s := p.idleSessions.head; s != nil; s = p.idleSessions.head {
		if due := s.idleSince + ttl; due > now {
			return due
		}
		p.dropSessionLocked(s)
	}
	return 0
}
