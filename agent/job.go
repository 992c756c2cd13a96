package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
	"github.com/procfleet/procfleet/worker/protocol"
)

// job is one delivered message on its way to a verdict: ack, nak or term.
type job struct {
	r       *runner
	msg     jetstream.Msg
	meta    *jetstream.MsgMetadata
	job     *queue.Job
	parsErr error
	// attempt is the deliveries charged to the job: its delivery count
	// less the free ones (see free.go).
	attempt int
	free    int

	ticket    *pool.Ticket
	reserveEr error

	mu         sync.Mutex
	callCancel context.CancelFunc
	// cut is set when a drain that ran out of time cancels the job's call
	// (cutByDrain): its end is then the agent's doing, not the job's.
	cut bool
	// canceled is set once a cancel covers the job; cctx ends then (see
	// cancel.go).
	canceled bool
	cctx     context.Context
	ccancel  context.CancelFunc

	// handedOff is set when the job's verdict waits for its result's
	// PubAck: the runner's acker then ends the job, not run's caller.
	handedOff bool
	// result is the result handed off, kept for the acker in case the
	// stream refuses it for its size.
	result *queue.Result
	// event is the attempt event of the job's call, until it is published
	// (with the result, or by publishEvent); guarded by mu.
	event []byte

	// prev is the job of the same session dispatched just before this one
	// by the same runner, while it had not ended; settled closes when this
	// job has ended (runner.end). A drain hands a session's held jobs back
	// in that order (see handBackInOrder).
	prev    *job
	settled chan struct{}

	// touched is when the server last surely restarted the message's ack
	// wait (Agent.stamp): its delivery, or an InProgress sent while
	// connected. leftUnrun and handedBack are set when startVerdict gave
	// the job up.
	touched    atomic.Int64
	leftUnrun  atomic.Bool
	handedBack atomic.Bool
	// freeWait, when set, bounds recordFree's write instead of
	// storeTimeout.
	freeWait time.Duration
}

func newJob(r *runner, msg jetstream.Msg) *job {
	j := &job{r: r, msg: msg, attempt: 1, settled: make(chan struct{})}
	j.touched.Store(r.a.stamp(time.Now()))
	meta, err := msg.Metadata()
	if err != nil {
		j.parsErr = &queue.BadRequestError{Reason: "message has no JetStream metadata: " + err.Error()}
		return j
	}
	j.meta = meta
	j.attempt = int(meta.NumDelivered)
	if j.attempt > 1 {
		r.a.metrics.redelivered.Inc()
	}
	j.job, j.parsErr = queue.ParseJob(msg.Subject(), msg.Headers(), msg.Data(), meta.Sequence.Stream, r.a.cfg.Queue)
	if j.parsErr == nil {
		j.adoptFiringID() // a periodic schedule's firing: see expire.go
		j.loadFree()
	}
	if j.parsErr == nil {
		limit := r.a.cfg.Pool.Worker.MaxFrame
		if limit <= 0 {
			limit = protocol.DefaultMaxFrame
		}
		if len(j.job.Payload) > limit {
			// The call frame carries the payload, so it can never reach a
			// worker: each attempt would only cost a worker.
			j.parsErr = &queue.BadRequestError{JobID: j.job.ID, Session: j.job.Session,
				Reason: fmt.Sprintf("payload of %d bytes exceeds the worker's max frame of %d bytes", len(j.job.Payload), limit)}
		}
	}
	return j
}

// reserve takes the job's place in its session's line. It runs in the fetch
// loop, so places are taken in stream order.
func (j *job) reserve() {
	if j.parsErr != nil || j.attempt > j.maxAttempts() {
		return
	}
	j.ticket, j.reserveEr = j.r.a.pool.Reserve(pool.Request{Session: j.job.Session, RequireSession: j.job.RequireSession})
}

func (j *job) maxAttempts() int {
	if j.job == nil || j.job.MaxAttempts == 0 {
		return queue.DefaultMaxAttempts
	}
	return j.job.MaxAttempts
}

func (j *job) logger() *zap.Logger {
	l := j.r.a.log
	if j.job != nil {
		l = l.With(zap.String("job", j.job.ID), zap.String("session", j.job.Session))
	}
	return l.With(zap.Int("attempt", j.attempt))
}

// cutByDrain cancels the job's call for a drain that ran out of time, or
// the call it is about to make.
func (j *job) cutByDrain() {
	j.mu.Lock()
	j.cut = true
	if j.callCancel != nil {
		j.callCancel()
	}
	j.mu.Unlock()
}

// wasCut reports whether a drain cut the job's call.
func (j *job) wasCut() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.cut
}

// handBackRequeued hands the job back unrun (handBackInOrder: behind its
// session's earlier jobs, uncharged) and counts it requeued: a job a drain
// found waiting for a worker or cut short, or one whose claim lapsed
// before it could start (startVerdict), so that the next owner runs the
// session's jobs in their order and a job with max_attempts 1 is not
// dead-lettered for it.
func (j *job) handBackRequeued() {
	if j.handBackInOrder() {
		j.r.a.record(outcomeRequeued, 0)
	}
}

func (j *job) run() {
	a := j.r.a
	if j.parsErr != nil {
		j.badRequest()
		return
	}
	if j.cancelBeforeRun(nil, time.Now()) {
		return
	}
	if j.attempt > j.maxAttempts() {
		j.exhaust(fmt.Sprintf("attempt %d exceeds max_attempts %d (delivered %d times)", j.attempt, j.maxAttempts(), j.meta.NumDelivered))
		return
	}
	if j.expire(nil) { // deadline passed before delivery: see expire.go
		return
	}
	if j.reserveEr != nil {
		a.counters.checkoutErrs.Add(1)
		j.retry(queue.KindApp, j.reserveEr)
		return
	}
	started := time.Now()
	wctx, stop := j.waitCtx()
	lease, err := j.ticket.Wait(wctx)
	stop()
	if err != nil {
		if j.cancelBeforeRun(nil, started) {
			return
		}
		switch {
		case j.r.waitCtx.Err() != nil:
			// Draining: hand the job back for the next owner, at once
			// (behind its session's earlier jobs), without charging the
			// delivery.
			j.handBackRequeued()
		case errors.Is(err, pool.ErrSessionLost):
			a.record(outcomeSessionLost, 0)
			j.finish(&queue.Result{OK: false, Error: &queue.ErrorInfo{Kind: queue.KindSessionLost, Message: err.Error()}}, started)
		default:
			a.counters.checkoutErrs.Add(1)
			j.logger().Info("checkout failed; job will be redelivered", zap.Error(err))
			j.retry(queue.KindApp, err)
		}
		return
	}
	a.metrics.checkoutWait.Observe(time.Since(started).Seconds())
	if j.expire(lease) { // deadline passed while it waited in line
		return
	}
	if j.cancelBeforeRun(lease, started) {
		return
	}
	j.call(lease, started)
}

func (j *job) call(lease *pool.Lease, started time.Time) {
	a := j.r.a
	timeout := a.cfg.attemptTimeout(j.job.TimeoutMS)
	ctx, cancel := context.WithTimeout(a.baseCtx, timeout)
	j.mu.Lock()
	j.callCancel = cancel
	cut := j.cut
	j.mu.Unlock()
	verdict := startHandBack // the drain ran out of time before the call began
	if !cut {
		verdict = j.startVerdict()
	}
	if verdict != startRun {
		cancel()
		lease.Release()
		if verdict == startLeave {
			j.leftFree()
		} else {
			j.handBackRequeued()
		}
		return
	}
	deadline, _ := ctx.Deadline()
	c := &worker.Call{
		Command:  j.job.Command,
		JobID:    j.job.ID,
		Attempt:  j.attempt,
		Deadline: deadline,
		Payload:  j.job.Payload,
		// A cancel of the job reaches the worker (see cancel.go).
		Cancel:      j.cctx.Done(),
		CancelGrace: a.cfg.CancelGrace,
	}
	progressSubj := a.cfg.Queue.ProgressSubject(j.job.ID)
	c.OnProgress = func(data json.RawMessage) {
		_ = a.nc.Publish(progressSubj, data)
	}
	callStart := time.Now()
	a.current.set(lease.WorkerID(), j.job.ID)
	res, err := lease.Call(ctx, c)
	a.current.set(lease.WorkerID(), "")
	j.r.observeRun(time.Since(callStart))
	// The event goes out with the result (finish), or before any other
	// verdict (retry, exhaust, poison), or at the latest when call returns.
	j.mu.Lock()
	j.event = j.attemptEvent(lease.WorkerID(), lease.PID(), callStart, res, err)
	j.mu.Unlock()
	defer j.publishEvent()
	cancel()
	lease.Release()
	base := &queue.Result{Worker: lease.WorkerID(), WorkerPID: lease.PID(), NewSession: lease.NewSession()}
	if j.canceledCall(base, res, err, started) {
		return
	}
	switch {
	case err != nil:
		kind := queue.KindApp
		if errors.Is(err, worker.ErrTimeout) {
			kind = queue.KindTimeout
			err = fmt.Errorf("%w (attempt timeout %v)", err, timeout)
		} else if errors.Is(err, worker.ErrCanceled) {
			kind = queue.KindCanceled
		}
		if j.poisoned(lease, err) {
			return
		}
		if kind == queue.KindCanceled && j.wasCut() {
			j.logger().Info("drain deadline: call canceled; job handed back", zap.String("worker", lease.WorkerID()))
			j.handBackRequeued()
			return
		}
		j.logger().Info("worker failed; job will be redelivered", zap.String("worker", lease.WorkerID()), zap.Error(err))
		j.retry(kind, err)
	case res.OK:
		a.record(outcomeOK, time.Since(started))
		base.OK = true
		base.Result = res.Value
		j.finish(base, started)
	case res.Error != nil && res.Error.Retryable:
		j.retry(queue.KindApp, fmt.Errorf("%s: %s", res.Error.Type, res.Error.Message))
	default:
		a.record(outcomeAppError, time.Since(started))
		info := &queue.ErrorInfo{Kind: queue.KindApp, Message: "worker reported failure"}
		if res.Error != nil {
			info.Message, info.Type = res.Error.Message, res.Error.Type
		}
		base.Error = info
		j.finish(base, started)
	}
}

// finish stores the job's result and acks the job once the stream has
// acknowledged the result: a job is acked only after its result is stored.
// The lane's publisher stores the result (with the attempt event) and the
// runner's acker waits for its PubAck, so neither this goroutine nor a
// worker waits a round trip, and the results of jobs finishing together
// share writes (see publisher).
func (j *job) finish(res *queue.Result, started time.Time) {
	j.fill(res, started)
	j.handedOff = true
	j.r.a.pub.store(finished{j: j, res: res, event: j.takeEvent()})
}

// publish is the publisher's half of finish: it publishes the attempt event
// and the result, and hands the result's future to the runner's acker.
func (j *job) publish(f finished) {
	a := j.r.a
	if a.killed.Load() {
		// Killed while the result waited in a burst: like a crash, store
		// nothing; the job comes back after its AckWait.
		j.r.end(j)
		return
	}
	j.sendEvent(f.event)
	res := f.res
	fut, err := a.topo.StoreResultAsync(res)
	if errors.Is(err, queue.ErrTooLarge) {
		res = j.tooLarge(res, err)
		fut, err = a.topo.StoreResultAsync(res)
	}
	if err != nil {
		j.requeue("store result", err)
		j.r.end(j)
		return
	}
	j.result = res
	j.r.acks <- pendingAck{j: j, f: fut}
}

// tooLarge is the outcome stored instead of res when res cannot be: the
// same verdict would only be refused again on every delivery, so the job
// ends with a too_large error naming the size and the limit.
func (j *job) tooLarge(res *queue.Result, err error) *queue.Result {
	j.logger().Warn("result too large to store; storing a too_large error instead", zap.Error(err))
	return queue.TooLargeResult(res, err)
}

// requeue is the answer to an outcome that could not be stored (a result or
// a dead letter): the job is not acked but naked with a delay, so it is not
// lost; it comes back and, once run again, its outcome is stored then (a
// duplicate is dropped by the results stream's dedup).
func (j *job) requeue(what string, err error) {
	j.logger().Warn(what+" failed; job will be redelivered", zap.Error(err))
	_ = j.msg.NakWithDelay(j.backoff())
}

// stored is the acker's half of finish: it waits for the result's PubAck
// and reports whether the job is to be acked now. It is not when the agent
// was killed (like a crash, the job is left to its AckWait) or the result
// was not stored (the job is requeued). Before it waits for a PubAck not
// yet there it calls beforeWait: the acker sends the acks it holds.
func (j *job) stored(f jetstream.PubAckFuture, beforeWait func()) bool {
	a := j.r.a
	if a.baseCtx.Err() != nil {
		return false
	}
	var err error
	select {
	case <-f.Ok():
	case err = <-f.Err():
	default:
		beforeWait()
		t := time.NewTimer(storeTimeout)
		defer t.Stop()
		select {
		case <-f.Ok():
		case err = <-f.Err():
		case <-t.C:
			err = fmt.Errorf("no PubAck within %v", storeTimeout)
		case <-a.baseCtx.Done():
			return false
		}
	}
	if errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) {
		// The results stream refused it for its size (its max message
		// size was lowered after this agent read it): every rerun would be
		// refused too, so store the smaller stand-in, here (a round trip:
		// the acks held go first).
		beforeWait()
		if !j.store(j.tooLarge(j.result, err), j.result.StartedAt) {
			return false
		}
		err = nil
	}
	if err != nil {
		j.requeue("store result", err)
		return false
	}
	return true
}

// ack acks a job whose result is stored.
func (j *job) ack() {
	if err := j.msg.Ack(); err != nil {
		j.logger().Warn("ack", zap.Error(err))
		return
	}
	j.forgetFree()
}

// storeTimeout bounds the wait for a result to be stored.
const storeTimeout = 10 * time.Second

// fill sets the result fields every verdict shares.
func (j *job) fill(res *queue.Result, started time.Time) {
	res.ID = j.job.ID
	res.JobSeq = j.meta.Sequence.Stream
	res.Queue = j.r.a.queueName()
	res.Session = j.job.Session
	res.Agent = j.r.a.cfg.Name
	res.Attempt = j.attempt
	res.EnqueuedAt = j.meta.Timestamp
	res.StartedAt = started
	res.FinishedAt = time.Now()
}

// store fills in the common result fields and stores it, waiting for the
// stream's ack; a result too large to store is replaced by a too_large one.
// If storing fails the job is requeued, so it is not lost, and store
// reports false.
func (j *job) store(res *queue.Result, started time.Time) bool {
	a := j.r.a
	j.fill(res, started)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), storeTimeout)
	defer cancel()
	err := a.topo.StoreResult(ctx, res)
	if errors.Is(err, queue.ErrTooLarge) {
		err = a.topo.StoreResult(ctx, j.tooLarge(res, err))
	}
	if err != nil {
		j.requeue("store result", err)
		return false
	}
	return true
}

// retry naks the job with a growing delay, or ends it in the dead-letter
// stream when this was its last attempt, or its consumer's last delivery.
func (j *job) retry(kind string, cause error) {
	j.publishEvent() // the attempt's end before its verdict
	if j.attempt >= j.maxAttempts() {
		j.exhaust(fmt.Sprintf("attempt %d of %d failed (%s): %v", j.attempt, j.maxAttempts(), kind, cause))
		return
	}
	if j.lastDelivery() {
		j.exhaust(fmt.Sprintf("attempt %d of %d failed (%s) on delivery %d, the consumer's MaxDeliver: %v",
			j.attempt, j.maxAttempts(), kind, j.meta.NumDelivered, cause))
		return
	}
	j.r.a.record(outcomeRetried, 0)
	_ = j.msg.NakWithDelay(j.backoff())
}

// backoff doubles with each attempt, with jitter, within the configured
// bounds.
func (j *job) backoff() time.Duration {
	a := j.r.a
	d := a.cfg.RetryBackoffMin << min(max(j.attempt-1, 0), 20)
	d = min(d, a.cfg.RetryBackoffMax)
	return d/2 + rand.N(d/2+1)
}

// exhaust writes the dead letter and the "exhausted" result, then terms the
// message (Term on a work queue removes it, so the copy comes first).
func (j *job) exhaust(why string) {
	j.publishEvent() // the attempt's end before its verdict
	a := j.r.a
	a.record(outcomeExhausted, 0)
	j.logger().Warn("job exhausted its attempts; dead-lettered", zap.String("why", why))
	if !j.deadLetter(queue.KindExhausted, why) {
		return
	}
	if j.store(&queue.Result{OK: false, Error: &queue.ErrorInfo{Kind: queue.KindExhausted, Message: why}}, time.Now()) {
		_ = j.msg.Term()
		j.forgetFree()
	}
}

// badRequest handles a message that is not a valid job: a dead letter, a
// bad_request result under the id queue.OutcomeID gives (so a client finds
// it even when the body's id is unusable), and Term.
func (j *job) badRequest() {
	a := j.r.a
	a.record(outcomeBadRequest, 0)
	msg := j.parsErr.Error()
	j.r.a.log.Warn("malformed job; dead-lettered", zap.String("subject", j.msg.Subject()), zap.Error(j.parsErr))
	if !j.deadLetter(queue.KindBadRequest, msg) {
		return
	}
	var bre *queue.BadRequestError
	if errors.As(j.parsErr, &bre) && bre.JobID != "" && j.meta != nil {
		// An invalid session token is named in the message, truncated;
		// the session field holds only a valid one.
		session := bre.Session
		if !queue.ValidToken(session) {
			session = ""
		}
		j.job = &queue.Job{ID: bre.JobID, Session: session}
		if !j.store(&queue.Result{OK: false, Error: &queue.ErrorInfo{Kind: queue.KindBadRequest, Message: msg}}, time.Now()) {
			return
		}
	}
	_ = j.msg.Term()
}

// deadLetter copies the message to the DLQ; on failure the job is requeued
// so it is not lost. A letter over the server's max payload is stored
// without the job body (and, if need be, its headers); see
// queue.WriteDeadLetter.
func (j *job) deadLetter(kind, why string) bool {
	a := j.r.a
	d := &queue.DeadLetter{
		Subject: originalSubject(a.cfg.Queue, j),
		Kind:    kind, Error: why, Attempts: j.attempt, Agent: a.cfg.Name, At: time.Now(),
		Headers: j.msg.Headers(),
	}
	if j.meta != nil {
		d.StreamSeq = j.meta.Sequence.Stream
	}
	if j.job != nil {
		d.JobID, d.Session = j.job.ID, j.job.Session
	} else {
		var bre *queue.BadRequestError
		if errors.As(j.parsErr, &bre) {
			d.JobID, d.Session = bre.JobID, bre.Session
		}
	}
	data := j.msg.Data()
	d.JobSize = len(data)
	if json.Valid(data) {
		d.Job = data
	} else {
		d.JobRaw = data
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), storeTimeout)
	defer cancel()
	err := a.topo.WriteDeadLetter(ctx, d)
	if errors.Is(err, queue.ErrTooLarge) {
		// Even without body and headers the letter does not fit (a server
		// with a tiny max payload): retrying cannot help, and the job's
		// result still records its end.
		j.logger().Error("dead letter too large to store even without the job; not written", zap.Error(err))
		return true
	}
	if err != nil {
		j.requeue("dead letter write", err)
		return false
	}
	a.metrics.deadLetters.WithLabelValues(kind).Inc()
	return true
}

// originalSubject rebuilds the subject a publisher used, so that a replayed
// dead letter is partitioned again by the stream.
func originalSubject(cfg queue.Config, j *job) string {
	if j.job != nil && j.job.Session != "" {
		return cfg.SessionSubject(j.job.Session)
	}
	if j.r.partition < 0 && j.msg.Subject() == cfg.AnySubject() {
		return cfg.AnySubject()
	}
	var bre *queue.BadRequestError
	if errors.As(j.parsErr, &bre) && bre.Session != "" && queue.ValidToken(bre.Session) {
		return cfg.SessionSubject(bre.Session)
	}
	return j.msg.Subject()
}
