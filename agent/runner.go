package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// runner pulls one consumer: a session partition it holds a lease on, or
// (partition -1) the shared anonymous consumer.
type runner struct {
	a         *Agent
	partition int
	cons      jetstream.Consumer
	lease     *queue.Lease

	// fetchCtx stops the fetch loop; waitCtx stops jobs still waiting for a
	// worker (they are naked). Running calls use the agent's base context.
	fetchCtx    context.Context
	fetchCancel context.CancelFunc
	waitCtx     context.Context
	waitCancel  context.CancelFunc

	loopDone chan struct{}
	jobs     sync.WaitGroup

	mu       sync.Mutex
	held     map[*job]struct{}
	sessions map[string]struct{} // sessions this runner has served
	drained  bool
}

func (a *Agent) newRunner(partition int, cons jetstream.Consumer, lease *queue.Lease) *runner {
	r := &runner{
		a: a, partition: partition, cons: cons, lease: lease,
		loopDone: make(chan struct{}),
		held:     make(map[*job]struct{}),
		sessions: make(map[string]struct{}),
	}
	r.fetchCtx, r.fetchCancel = context.WithCancel(a.baseCtx)
	r.waitCtx, r.waitCancel = context.WithCancel(a.baseCtx)
	go r.loop()
	return r
}

func (r *runner) loop() {
	defer close(r.loopDone)
	ctx := r.fetchCtx
	a := r.a
	for ctx.Err() == nil {
		free := a.held.wait(ctx)
		if free == 0 {
			return
		}
		batch := r.batchSize(free)
		if batch == 0 {
			// Anonymous jobs are only taken when a worker is free.
			if !sleepCtx(ctx, 20*time.Millisecond) {
				return
			}
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, a.cfg.FetchWait)
		msgs, err := r.cons.Fetch(batch, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range msgs.Messages() {
				r.dispatch(msg)
			}
			err = msgs.Error()
		}
		cancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			a.log.Warn("fetch", zap.Int("partition", r.partition), zap.Error(err))
			if !sleepCtx(ctx, 250*time.Millisecond) {
				return
			}
		}
	}
}

// batchSize decides how many messages one pull asks for. Session partitions
// share the agent's free capacity; the anonymous consumer takes only as many
// jobs as there are idle workers not already spoken for.
func (r *runner) batchSize(free int) int {
	a := r.a
	if r.partition < 0 {
		st := a.pool.Stats()
		n := min(st.Idle-st.Waiters, free)
		return max(n, 0)
	}
	a.mu.Lock()
	owned := max(len(a.runners), 1)
	a.mu.Unlock()
	return min(max(free/owned, 1), 64)
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dispatch runs in the fetch loop, in message order: it takes the job's place
// in its session's line synchronously, then lets the job run on its own.
func (r *runner) dispatch(msg jetstream.Msg) {
	a := r.a
	a.held.add(1)
	j := newJob(r, msg)
	r.mu.Lock()
	if r.drained {
		r.mu.Unlock()
		_ = msg.Nak()
		a.held.done(1)
		return
	}
	r.held[j] = struct{}{}
	if j.job != nil && j.job.Session != "" {
		r.sessions[j.job.Session] = struct{}{}
	}
	r.mu.Unlock()
	j.reserve()
	r.jobs.Add(1)
	go func() {
		defer r.jobs.Done()
		defer a.held.done(1)
		defer r.forget(j)
		j.run()
	}()
}

func (r *runner) forget(j *job) {
	r.mu.Lock()
	delete(r.held, j)
	r.mu.Unlock()
}

// touchHeld marks every held message in progress.
func (r *runner) touchHeld() {
	r.mu.Lock()
	js := make([]*job, 0, len(r.held))
	for j := range r.held {
		js = append(js, j)
	}
	r.mu.Unlock()
	for _, j := range js {
		_ = j.msg.InProgress()
	}
}

// drain stops fetching, naks jobs that have not reached a worker, and waits
// for running jobs to finish. If ctx ends first, running calls are canceled
// (their jobs are naked by the normal failure path).
func (r *runner) drain(ctx context.Context) {
	r.fetchCancel()
	<-r.loopDone
	r.mu.Lock()
	r.drained = true
	r.mu.Unlock()
	r.waitCancel()
	done := make(chan struct{})
	go func() {
		r.jobs.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		r.a.log.Warn("drain deadline: canceling running jobs", zap.Int("partition", r.partition))
		r.mu.Lock()
		for j := range r.held {
			j.cancelCall()
		}
		r.mu.Unlock()
		<-done
	}
	// Another agent may serve these sessions next: the state this agent's
	// workers hold for them is stale from now on.
	r.mu.Lock()
	sessions := r.sessions
	r.sessions = map[string]struct{}{}
	r.mu.Unlock()
	for s := range sessions {
		r.a.pool.EndSession(s)
	}
}

// wait blocks until the fetch loop and every job have ended (after Kill).
func (r *runner) wait() {
	r.fetchCancel()
	r.waitCancel()
	<-r.loopDone
	r.jobs.Wait()
}
