package pool

import (
	"context"
	"fmt"
)

// startOpLocked takes the idle (or just freed) W for pool business: pending
// session_end frames, and a health check when ping is set.
func (p *Pool) startOpLocked(W *pw, ping bool) {
	ends := W.pendingEnds
	W.pendingEnds = nil
	p.setStateLocked(W, wBusy)
	if !p.goLocked(func() { p.runOp(W, ends, ping) }) {
		W.pendingEnds = ends
	}
}

func (p *Pool) runOp(W *pw, ends []string, ping bool) {
	var err error
	for _, s := range ends {
		if err = W.w.SessionEnd(s); err != nil {
			break
		}
	}
	hard := false
	if err == nil && ping {
		ctx, cancel := context.WithTimeout(p.opCtx, p.cfg.HealthTimeout)
		err = W.w.Ping(ctx)
		cancel()
		hard = err == nil && p.overMaxRSS(W)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if ping {
		W.lastCheck = now
	}
	if W.removed {
		return
	}
	switch {
	case err != nil:
		if ping {
			W.pingFails++
		}
		if W.w.Validate() != nil || !ping || !W.proven || W.pingFails >= p.cfg.HealthFailures {
			p.removeLocked(W, err, nil, kindRemove, now)
			return
		}
	case hard:
		p.recycleOverRSSLocked(W, now)
		return
	case ping:
		W.pingFails = 0
		p.proveLocked(W)
	}
	p.freeWorkerLocked(W, now)
}

// overMaxRSS reports whether W is over the hard memory limit. It reads
// /proc, so it runs outside the lock; a worker whose RSS cannot be read is
// not over (a dead one is caught by Validate and the next call).
func (p *Pool) overMaxRSS(W *pw) bool {
	if p.cfg.MaxRSS <= 0 {
		return false
	}
	n, err := W.w.RSS()
	return err == nil && n > p.cfg.MaxRSS
}

// recycleOverRSSLocked recycles W at once for its memory: a hard limit,
// which does not wait for its sessions (they are lost).
func (p *Pool) recycleOverRSSLocked(W *pw, now int64) {
	p.removeLocked(W, fmt.Errorf("pool: worker over MaxRSS (%d bytes)", p.cfg.MaxRSS), nil, kindHardRSS, now)
}
