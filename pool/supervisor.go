package pool

import (
	"time"

	"go.uber.org/zap"
)

// supervise is the pool's maintenance loop: restarts after backoff, TTL and
// IdleTTL retirement, session expiry and health checks. It sleeps until the
// earliest of those is due (at most a tick) or until kicked by wakeAtLocked.
func (p *Pool) supervise() {
	defer p.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		p.mu.Lock()
		now := p.now()
		next := p.maintainLocked(now)
		p.mu.Unlock()
		timer.Reset(time.Duration(next - now))
		select {
		case <-p.quit:
			return
		case <-timer.C:
		case <-p.kick:
		}
	}
}

// maintainLocked does whatever is due at now and returns when to look again.
func (p *Pool) maintainLocked(now int64) int64 {
	if p.state != stRunning {
		return now + int64(time.Hour)
	}
	p.inMaintain = true
	p.nextWake = now + p.tick
	if due := p.expireSessionsLocked(now); due != 0 {
		p.wakeAtLocked(due)
	}
	for _, sl := range p.slots {
		W := sl.w
		if W == nil {
			continue
		}
		if !W.proven {
			if now-W.startedAt >= int64(startProbation) {
				p.proveLocked(W)
			} else {
				p.wakeAtLocked(W.startedAt + int64(startProbation))
			}
		}
		if ttl := int64(p.cfg.TTL); ttl > 0 && !W.retiring {
			if now-W.startedAt >= ttl {
				p.retiringLocked(W, "ttl")
			} else {
				p.wakeAtLocked(W.startedAt + ttl)
			}
		}
		if W.state != wIdle {
			continue
		}
		// A worker that holds a session is not idle in the sense that
		// matters: it keeps its session's state and all its work until
		// the session ends, and its idle time counts from then.
		if idle := int64(p.cfg.IdleTTL); idle > 0 && !W.retiring && len(W.sessions) == 0 {
			if now-W.idleSince() >= idle {
				p.retiringLocked(W, "idle_ttl")
			} else {
				p.wakeAtLocked(W.idleSince() + idle)
			}
		}
		switch {
		case W.retiring && len(W.sessions) == 0:
			p.retireLocked(W, true, now)
		case len(W.pendingEnds) > 0:
			p.startOpLocked(W, false)
		case p.cfg.HealthInterval > 0:
			due := max(W.lastUsed, W.lastCheck) + int64(p.cfg.HealthInterval)
			if due <= now {
				p.startOpLocked(W, true)
			} else {
				p.wakeAtLocked(due)
			}
		}
	}
	p.startDueLocked(now)
	p.inMaintain = false
	if p.nextWake <= now {
		// Something asked for "now" while we were at it; look again soon
		// without spinning.
		p.nextWake = now + int64(time.Millisecond)
	}
	return p.nextWake
}

// retiringLocked marks W for soft recycling: it takes no new session (but
// anonymous jobs while it has sessions), and stops once it holds none.
func (p *Pool) retiringLocked(W *pw, why string) {
	W.retiring = true
	p.log.Info("worker retiring", zap.String("worker", W.id), zap.Int("pid", W.pid),
		zap.String("limit", why), zap.Int("sessions", len(W.sessions)))
}
