package agent

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// Cancellation.
//
// Cancels are stored in the cancels stream (queue.CancelStream), whoever
// publishes them. Each agent follows that stream from its start and keeps
// every cancel in memory (cancelSet); it takes no job before it has caught
// up, so a cancel stored before the agent (re)started still holds. Nothing
// is asked of NATS per job: a delivered job is checked against the set, and
// a job the agent holds when its cancel arrives is told at once.
//
//   - A canceled job that has not reached a worker (just delivered, or
//     waiting for one) never does: its result is "canceled", stored once,
//     and it is acked. No retry, no dead letter.
//   - A running job's call is canceled (worker.Call.Cancel): a worker that
//     announced the "cancel" feature gets a cancel frame; any worker has
//     Config.CancelGrace to answer, else it is killed and replaced like at a
//     timeout (its sessions are lost). A worker killed for a cancel is not
//     held against the job by the poison guard. An error answer, or the
//     kill, ends the job "canceled"; an OK answer that raced the cancel is
//     kept: the job finished.
//   - A job whose result is stored before its cancel arrives keeps its
//     result: it is acked and gone, and a redelivery of it (after a crash
//     between store and ack) stores nothing new, as the results stream drops
//     the duplicate.
//   - A job held by an agent that dies is redelivered to another agent,
//     which finds the cancel in its own set.

// DefaultCancelGrace is Config.CancelGrace's default.
const DefaultCancelGrace = worker.DefaultCancelGrace

// cancelSet is the agent's view of the cancels stream.
type cancelSet struct {
	dedup time.Duration // the jobs stream's dedup window: see queue.CancelCovers
	ttl   time.Duration // entries older than this are gone from the stream too

	mu     sync.Mutex
	at     map[string]time.Time     // job id -> when its cancel was stored
	held   map[string]map[*job]bool // job id -> jobs with that id this agent holds
	pruned time.Time
}

func newCancelSet(cfg queue.Config) *cancelSet {
	return &cancelSet{
		dedup: cfg.DedupWindow, ttl: cfg.CancelTTL,
		at:   make(map[string]time.Time),
		held: make(map[string]map[*job]bool),
	}
}

// add records a cancel and tells the held jobs it covers.
func (s *cancelSet) add(id string, at time.Time) {
	s.mu.Lock()
	if old, ok := s.at[id]; !ok || at.After(old) {
		s.at[id] = at
	}
	var hit []*job
	for j := range s.held[id] {
		if j.coveredBy(at, s.dedup) {
			hit = append(hit, j)
		}
	}
	if now := time.Now(); now.Sub(s.pruned) > time.Minute {
		s.pruned = now
		for k, t := range s.at {
			if now.Sub(t) > s.ttl {
				delete(s.at, k)
			}
		}
	}
	s.mu.Unlock()
	for _, j := range hit {
		j.markCanceled()
	}
}

// track registers a held job so that a later cancel reaches it, and marks
// it canceled at once if a cancel covers it already.
func (s *cancelSet) track(j *job) {
	id := j.job.ID
	s.mu.Lock()
	js := s.held[id]
	if js == nil {
		js = make(map[*job]bool)
		s.held[id] = js
	}
	js[j] = true
	at, ok := s.at[id]
	s.mu.Unlock()
	if ok && j.coveredBy(at, s.dedup) {
		j.markCanceled()
	}
}

// untrack forgets a job once its verdict is sent.
func (s *cancelSet) untrack(j *job) {
	if j.job == nil {
		return
	}
	s.mu.Lock()
	if js := s.held[j.job.ID]; js != nil {
		delete(js, j)
		if len(js) == 0 {
			delete(s.held, j.job.ID)
		}
	}
	s.mu.Unlock()
}

// size is how many cancels the set holds.
func (s *cancelSet) size() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.at)
}

// followCancels starts the agent's cancel feed and waits until it has caught
// up with the cancels stored so far (or ctx ends).
func (a *lane) followCancels(ctx context.Context) error {
	a.cancels = newCancelSet(a.cfg.Queue)
	feed, err := a.topo.FollowCancels(ctx, a.cancels.add)
	if err != nil {
		return err
	}
	select {
	case <-feed.CaughtUp():
	case <-ctx.Done():
		feed.Stop()
		return fmt.Errorf("catching up with %s: %w", a.cfg.Queue.CancelStream(), ctx.Err())
	}
	a.cancelFeed = feed
	// Forget cancels when the stream does, whatever this agent's config says.
	if age := feed.MaxAge(); age > 0 {
		a.cancels.mu.Lock()
		a.cancels.ttl = age
		a.cancels.mu.Unlock()
	}
	a.log.Debug("cancels loaded", zap.Int("cancels", a.cancels.size()))
	return nil
}

// stopCancels ends the cancel feed.
func (a *lane) stopCancels() {
	if a.cancelFeed != nil {
		a.cancelFeed.Stop()
		a.cancelFeed = nil
	}
}

// trackCancel hooks a parsed job into the cancel set (from dispatch).
func (j *job) trackCancel() {
	j.cctx, j.ccancel = context.WithCancel(context.Background())
	if j.job != nil && j.meta != nil && j.r.a.cancels != nil {
		j.r.a.cancels.track(j)
	}
}

// untrackCancel is trackCancel's undo, once the job's verdict is sent.
func (j *job) untrackCancel() {
	if j.ccancel != nil {
		j.ccancel()
	}
	if j.r.a.cancels != nil {
		j.r.a.cancels.untrack(j)
	}
}

// coveredBy reports whether a cancel stored at at applies to this job.
func (j *job) coveredBy(at time.Time, dedup time.Duration) bool {
	return queue.CancelCovers(at, j.meta.Timestamp, dedup)
}

func (j *job) markCanceled() {
	j.mu.Lock()
	j.canceled = true
	j.mu.Unlock()
	j.ccancel()
}

func (j *job) isCanceled() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.canceled
}

// waitCtx is the runner's wait context, also ended by a cancel of the job.
func (j *job) waitCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(j.r.waitCtx)
	stop := context.AfterFunc(j.cctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// cancelBeforeRun ends a canceled job that has not reached a worker: it
// gives up its place in line (or the lease it got) and stores "canceled".
// It reports whether the job was canceled.
func (j *job) cancelBeforeRun(lease *pool.Lease, started time.Time) bool {
	if !j.isCanceled() || j.r.a.baseCtx.Err() != nil {
		// Not canceled, or the agent was killed: then, as after a crash,
		// the job's redelivery ends it.
		return false
	}
	if lease != nil {
		lease.Release()
	} else if j.ticket != nil {
		j.ticket.Cancel()
	}
	j.endCanceled(&queue.Result{}, "canceled before it ran", started)
	return true
}

// canceledCall reports whether a call's outcome is the job's cancel, and if
// so ends the job "canceled". An OK answer is never overridden: the job
// finished before the worker saw the cancel.
func (j *job) canceledCall(base *queue.Result, res worker.Result, err error, started time.Time) bool {
	if !j.isCanceled() || (err == nil && res.OK) {
		return false
	}
	if err != nil && j.r.a.baseCtx.Err() != nil {
		// The call failed because the agent is dying (Kill): like a
		// crash, leave the job to its redelivery, which ends it.
		return false
	}
	msg := "canceled while running"
	switch {
	case err != nil:
		msg = fmt.Sprintf("canceled while running; the worker did not stop within the cancel grace and was killed (%v)", err)
	case res.Error != nil:
		msg = fmt.Sprintf("canceled while running; the worker stopped with %s: %s", res.Error.Type, res.Error.Message)
	}
	j.endCanceled(base, msg, started)
	return true
}

// endCanceled stores the "canceled" result and acks the job (finish).
func (j *job) endCanceled(base *queue.Result, msg string, started time.Time) {
	j.r.a.record(outcomeCanceled, time.Since(started))
	j.logger().Info("job canceled", zap.String("how", msg))
	base.OK = false
	base.Result = nil
	base.Error = &queue.ErrorInfo{Kind: queue.KindCanceled, Message: msg}
	j.finish(base, started)
}
