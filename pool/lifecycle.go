package pool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker"
)

// A slot is one of the Size places of the pool. It holds at most one live
// worker at a time; a removed or retired worker leaves its slot at once, and
// the slot starts a replacement (after a backoff when starts are failing).
type slot struct {
	w         *pw    // the live worker (idle or busy), nil while empty
	starting  bool   // a start is in flight
	startID   string // id of the worker being started
	restartAt int64  // an empty slot starts no earlier than this
	cold      bool   // lazy pool: nothing asked for this slot yet
	gens      int    // successful starts
	everReady bool
}

type wState uint8

const (
	wIdle wState = iota
	wBusy
	wStopping
)

func (s wState) String() string {
	switch s {
	case wIdle:
		return "idle"
	case wBusy:
		return "busy"
	default:
		return "stopping"
	}
}

// pw is a worker as the pool tracks it. Every field but the immutable ones
// (w, id, pid, slot, startedAt) is guarded by Pool.mu.
type pw struct {
	w         *worker.Worker
	id        string
	pid       int
	slot      *slot
	startedAt int64 // pool clock

	state       wState
	proven      bool // answered a call or a ping, or outlived startProbation
	removed     bool // left its slot: removed, retired or being stopped
	retiring    bool // soft limit reached: serves its bound sessions (and anonymous jobs meanwhile), takes no new one
	jobs        int
	lastUsed    int64 // last checkin (pool clock)
	unboundAt   int64 // when its last session left it (pool clock)
	lastCheck   int64 // last health check
	pingFails   int
	sessions    map[*session]struct{} // sessions bound to this worker
	pending     sessList              // bound sessions with a job waiting for this worker
	pendingEnds []string              // session_end frames to send before the next job
}

// setStateLocked moves W to st, keeping the busy count that Stop drains on.
func (p *Pool) setStateLocked(W *pw, st wState) {
	if W.state == wBusy {
		p.busy--
	}
	if st == wBusy {
		p.busy++
	}
	W.state = st
	if p.busy == 0 && p.drained != nil {
		close(p.drained)
		p.drained = nil
	}
}

// goLocked runs f on a pool-owned goroutine unless shutdown has begun.
func (p *Pool) goLocked(f func()) bool {
	if p.closed {
		return false
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f()
	}()
	return true
}

// wakeAtLocked makes sure the supervisor looks again no later than t.
func (p *Pool) wakeAtLocked(t int64) {
	if t >= p.nextWake {
		return
	}
	p.nextWake = t
	if !p.inMaintain {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// startDueLocked starts the empty slots whose restart time has come, within
// StartConcurrency.
func (p *Pool) startDueLocked(now int64) {
	if p.state != stRunning {
		return
	}
	for _, s := range p.slots {
		if p.nStarting >= p.cfg.StartConcurrency {
			return
		}
		if s.w != nil || s.starting || s.cold {
			continue
		}
		if s.restartAt > now {
			p.wakeAtLocked(s.restartAt)
			continue
		}
		p.startLocked(s)
	}
}

func (p *Pool) startLocked(s *slot) {
	p.workerSeq++
	cfg := p.cfg.Worker
	cfg.ID = fmt.Sprintf("%s-%d", p.cfg.Name, p.workerSeq)
	if !p.goLocked(func() { p.runStart(s, cfg) }) {
		return
	}
	s.starting = true
	s.startID = cfg.ID
	p.nStarting++
}

// runStart starts one worker for slot s and installs it.
func (p *Pool) runStart(s *slot, cfg worker.Config) {
	w, err := worker.Start(p.startCtx, cfg)
	p.mu.Lock()
	now := p.now()
	s.starting = false
	p.nStarting--
	if p.state != stRunning {
		p.mu.Unlock()
		if w != nil {
			w.Kill()
		}
		return
	}
	if err != nil {
		p.startFailures++
		p.consecutive++
		p.backoff = p.backoffFor(p.consecutive)
		p.lastError = err.Error()
		s.restartAt = now + int64(jitter(p.backoff))
		p.startDueLocked(now)
		consecutive, backoff := p.consecutive, p.backoff
		p.mu.Unlock()
		p.log.Warn("worker start failed", zap.String("worker", cfg.ID), zap.Error(err),
			zap.Int("consecutive_failures", consecutive), zap.Duration("backoff", backoff))
		return
	}
	W := &pw{
		w:         w,
		id:        w.ID(),
		pid:       w.PID(),
		slot:      s,
		startedAt: now,
		lastUsed:  now,
		lastCheck: now,
		state:     wBusy, // freeWorkerLocked hands it out or idles it
		sessions:  make(map[*session]struct{}),
	}
	W.pending.link = pendingLink
	p.busy++
	s.w = W
	s.gens++
	if s.gens > 1 {
		p.restarts++
	}
	if !s.everReady {
		s.everReady = true
		p.readyCount++
		if p.readyCount == len(p.slots) {
			close(p.ready)
		}
	}
	if p.consecutive > 0 {
		// Starts have been failing: the worker answers a ping before it
		// gets a job, so that a worker that dies right after its ready
		// frame fails its probation on the ping, not on a job.
		p.startOpLocked(W, true)
	} else {
		p.freeWorkerLocked(W, now)
	}
	p.startDueLocked(now)
	p.mu.Unlock()
	p.log.Info("worker ready", zap.String("worker", W.id), zap.Int("pid", W.pid))
}

// startProbation is how long a ready worker is on probation: one that dies
// or breaks before it has answered a call or a ping, and within this time
// of its start, counts as a failed start (backoff, Degraded), as if it had
// died before its ready frame. A worker that exits right after ready would
// otherwise be restarted at once, for ever, and each generation would fail
// the job that drew it. While starts are failing, a new worker also answers
// a ping before it is given a job (runStart), so that jobs wait for a
// worker that works instead of spending their attempts on a crash loop.
const startProbation = 2 * time.Second

// proveLocked ends W's probation: its start succeeded, so starts are no
// longer failing.
func (p *Pool) proveLocked(W *pw) {
	if W.proven {
		return
	}
	W.proven = true
	p.consecutive = 0
	p.backoff = 0
}

// failedProbationLocked reports whether W's removal for reason counts as a
// failed start, and counts it: W broke while on probation before any job
// could be the cause, i.e. before it was sent a call (a failed or late
// probation ping included), or in a call it never read
// (worker.ErrUnread). A worker that read a call and then died may have
// been killed by that job (the agent's poison guard judges it); a call
// that timed out or was canceled is the job's doing too.
func (p *Pool) failedProbationLocked(W *pw, reason error, now int64) bool {
	if W.proven || now-W.startedAt >= int64(startProbation) {
		return false
	}
	if W.jobs > 0 && !errors.Is(reason, worker.ErrUnread) {
		// It ran a call (ErrUnread implies ErrDead, never a timeout).
		return false
	}
	p.startFailures++
	p.consecutive++
	p.backoff = p.backoffFor(p.consecutive)
	return true
}

// idleSince is when W's idle time for IdleTTL began: its last job, or the
// end of its last session if later (a worker holding a session is not
// idle).
func (W *pw) idleSince() int64 { return max(W.lastUsed, W.unboundAt) }

// backoffFor is the restart delay after n consecutive failed starts.
func (p *Pool) backoffFor(n int) time.Duration {
	b := p.cfg.BackoffMin
	for i := 1; i < n && b < p.cfg.BackoffMax; i++ {
		b *= 2
	}
	return min(b, p.cfg.BackoffMax)
}

// jitter spreads d over [d/2, d] so that slots failing together do not
// retry in lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + time.Duration(rand.Int64N(int64(d-half)+1))
}

// scheduleRestartLocked lets the empty slot s start again, at once unless
// starts are failing.
func (p *Pool) scheduleRestartLocked(s *slot, now int64) {
	s.restartAt = now
	if p.consecutive > 0 {
		s.restartAt = now + int64(jitter(p.backoff))
	}
	p.startDueLocked(now)
}

// detachLocked takes W out of its slot and into the stopping set.
func (p *Pool) detachLocked(W *pw) {
	W.removed = true
	if W.slot.w == W {
		W.slot.w = nil
	}
	p.setStateLocked(W, wStopping)
	p.stopping[W] = struct{}{}
}

// reapLocked stops (or kills) W on a pool goroutine and drops it from the
// stopping set once it is reaped. After shutdown began, shutdown does that.
func (p *Pool) reapLocked(W *pw, kill bool) {
	p.goLocked(func() {
		if kill {
			W.w.Kill()
		} else if err := W.w.Stop(p.runCtx); err != nil {
			p.log.Warn("worker stop cut short", zap.String("worker", W.id), zap.Error(err))
		}
		p.mu.Lock()
		delete(p.stopping, W)
		p.mu.Unlock()
	})
}

// retireLocked stops W gracefully: a soft recycle (recycle true, it holds no
// session) or the pool stopping.
func (p *Pool) retireLocked(W *pw, recycle bool, now int64) {
	for s := range W.sessions {
		p.unbindLocked(s)
	}
	p.detachLocked(W)
	p.reapLocked(W, false)
	if recycle {
		p.recycled++
		p.log.Info("worker recycled", zap.String("worker", W.id), zap.Int("pid", W.pid), zap.Int("jobs", W.jobs))
		p.scheduleRestartLocked(W.slot, now)
	}
}

type removeKind uint8

const (
	kindRemove  removeKind = iota // crash, protocol error, timeout, failed health check
	kindHardRSS                   // hard recycle
)

// removeLocked kills W and starts its replacement. Its sessions that had
// state on it are lost: the next checkout of each reports it, except for
// reporter, whose lease holder has already been told (a failed call or
// validation).
func (p *Pool) removeLocked(W *pw, reason error, reporter *session, kind removeKind, now int64) {
	var affected []*session
	for s := range W.sessions {
		if s.seen {
			s.lost = true
			s.reported = s == reporter
			s.lostWorker, s.lostPID, s.lostErr = W.id, W.pid, reason
		}
		p.unbindLocked(s)
		affected = append(affected, s)
	}
	probation := kind == kindRemove && p.failedProbationLocked(W, reason, now)
	p.detachLocked(W)
	p.reapLocked(W, true)
	if kind == kindHardRSS {
		p.recycled++
	} else {
		p.removed++
	}
	p.lastError = reason.Error()
	if probation {
		p.lastError = fmt.Sprintf("worker broke %v after its ready frame, before answering anything (counted as a failed start): %v",
			time.Duration(now-W.startedAt).Round(time.Millisecond), reason)
	}
	for _, s := range affected {
		if s.active == nil {
			p.advanceSessionLocked(s, now)
		}
	}
	if p.state == stRunning {
		p.scheduleRestartLocked(W.slot, now)
		switch {
		case kind == kindHardRSS:
			p.log.Info("worker over MaxRSS; recycled", zap.String("worker", W.id), zap.Int("pid", W.pid))
		case probation:
			p.log.Warn("worker broke right after start; counted as a failed start", zap.String("worker", W.id), zap.Int("pid", W.pid),
				zap.Error(reason), zap.Int("consecutive_failures", p.consecutive), zap.Duration("backoff", p.backoff))
		default:
			p.log.Warn("worker removed", zap.String("worker", W.id), zap.Int("pid", W.pid),
				zap.Int("sessions", len(affected)), zap.Error(reason))
		}
	}
}
