package agent

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// runner pulls one consumer: a session partition it holds a lease on, or
// (partition -1) the shared anonymous consumer.
type runner struct {
	a         *lane
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
	jobs     sync.WaitGroup // every dispatched job until its verdict is sent

	// acks carries jobs whose result is on its way to the stream to the
	// acker, which acks each once its result is stored. It is closed once
	// jobs is done.
	acks      chan pendingAck
	ackDone   chan struct{}
	closeAcks sync.Once

	// leaseMu orders the lease writes of a runner being handed over: the
	// membership loop's renewals while it drains and the release once the
	// drain has ended (releasePartition). handover says the lease is to be
	// kept until then; released that it is no longer to be written.
	leaseMu  sync.Mutex
	handover bool
	released bool

	// leaseOK is when the last successful write of the lease (acquire or
	// renewal) was sent (Agent.stamp); see pullDeadline.
	leaseOK atomic.Int64
	// leaseUnsure: the last renewal's outcome is unknown (lane.renew).
	// Only the membership loop uses it.
	leaseUnsure bool

	// recreatedAt is when the fetch loop last tried to recreate a lost
	// memory-stored consumer (recreateConsumer), and recreating is closed
	// when that attempt ends (nil: none in flight); noConsumerLogged is
	// when the loop last logged a pull that found no consumer. Only the
	// fetch loop uses them.
	recreatedAt      time.Time
	recreating       chan struct{}
	noConsumerLogged time.Time

	// runAvg is a moving average of how long this runner's jobs ran on a
	// worker (ns); 0 until one has. See shortJobs.
	runAvg atomic.Int64

	mu       sync.Mutex
	held     map[*job]struct{}
	sessions map[string]struct{} // sessions this runner has served
	lastOf   map[string]*job     // each session's last dispatched job not yet ended
	drained  bool
}

// newRunner starts a runner; leaseAt is when the write that took lease was
// sent (zero for the anonymous runner, which needs no lease).
func (a *lane) newRunner(partition int, cons jetstream.Consumer, lease *queue.Lease, leaseAt time.Time) *runner {
	r := &runner{
		a: a, partition: partition, cons: cons, lease: lease,
		loopDone: make(chan struct{}),
		held:     make(map[*job]struct{}),
		sessions: make(map[string]struct{}),
		lastOf:   make(map[string]*job),
		// Jobs beyond the capacity block on a full channel, which only
		// delays them.
		acks:    make(chan pendingAck, a.cfg.Capacity+64),
		ackDone: make(chan struct{}),
	}
	r.leaseOK.Store(a.stamp(leaseAt))
	r.fetchCtx, r.fetchCancel = context.WithCancel(a.baseCtx)
	r.waitCtx, r.waitCancel = context.WithCancel(a.baseCtx)
	go r.ackLoop()
	go r.loop()
	return r
}

// pendingAck is a job whose result has been published, and the future of
// the result's PubAck.
type pendingAck struct {
	j *job
	f jetstream.PubAckFuture
}

// ackLoop acks jobs in the order their results were published; PubAcks come
// back in that order, so one goroutine keeps up without waiting much. The
// acks of jobs whose results are stored are sent together when the acker
// would wait (for the next result or its PubAck), or maxAckBatch of them:
// the publisher stores results in bursts (publisher.go), so the PubAcks of
// a burst come back together and their acks cost one write, not one each.
// An ack waits for nothing but the PubAcks already there.
func (r *runner) ackLoop() {
	defer close(r.ackDone)
	var due []*job
	flush := func() {
		for _, j := range due {
			j.ack()
			r.end(j)
		}
		clear(due)
		due = due[:0]
	}
	for {
		var p pendingAck
		var ok bool
		select {
		case p, ok = <-r.acks:
		default:
			flush()
			p, ok = <-r.acks
		}
		if !ok {
			flush()
			return
		}
		if !p.j.stored(p.f, flush) {
			r.end(p.j)
			continue
		}
		if due = append(due, p.j); len(due) >= maxAckBatch {
			flush()
		}
	}
}

// maxAckBatch is the most acks the acker holds.
const maxAckBatch = 64

// stopAcks ends the acker once every job has ended.
func (r *runner) stopAcks() {
	r.closeAcks.Do(func() { close(r.acks) })
	<-r.ackDone
}

// end releases what a job held once its verdict is sent.
func (r *runner) end(j *job) {
	j.untrackCancel()
	r.forget(j)
	close(j.settled)
	r.a.held.done(1)
	r.jobs.Done()
}

func (r *runner) loop() {
	defer close(r.loopDone)
	ctx := r.fetchCtx
	defer func() {
		// ctx has ended, which ends a recreate in flight too.
		if r.recreating != nil {
			<-r.recreating
		}
	}()
	a := r.a
	// backlog is what the consumer reported still pending with the last
	// message delivered: while there is one, pulls are reserved batches
	// that return at once; otherwise a single-message long poll waits for
	// the next arrival.
	backlog := 0
	for ctx.Err() == nil {
		var err error
		backlog, err = r.pull(ctx, backlog)
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, jetstream.ErrNoMessages) {
			// A lost consumer fails every pull (4 a second) until it is
			// made again, possibly by serve's sweep a few seconds later:
			// one line per runner every few seconds tells as much.
			if now := time.Now(); !errors.Is(err, nats.ErrNoResponders) || now.Sub(r.noConsumerLogged) >= noConsumerLogEvery {
				if errors.Is(err, nats.ErrNoResponders) {
					r.noConsumerLogged = now
				}
				a.log.Warn("fetch", zap.Int("partition", r.partition), zap.Error(err))
			}
			backlog = 0
			r.recreateConsumer(ctx, err)
			if !sleepCtx(ctx, 250*time.Millisecond) {
				return
			}
		}
	}
}

// noConsumerLogEvery spaces a runner's log lines about pulls that find no
// consumer.
const noConsumerLogEvery = 5 * time.Second

// recreateTimeout bounds one attempt to recreate a consumer. A server that
// refuses the request (the user may not create consumers) drops it, so a
// refusal is this long without an answer.
const recreateTimeout = 5 * time.Second

// recreateConsumer answers a pull that found no consumer: with memory-stored
// consumers (queue.Config.MemoryConsumers) a restart of the server loses
// them, while the jobs wait in the stream. A pull request to a consumer that
// does not exist has no responders; so does one sent while the server's
// JetStream is starting, when the create fails too and the next failed pull
// tries again. The attempt runs beside the fetch loop, which goes on
// pulling: under deploy/nats-server.conf the agent may not create
// consumers, its request goes unanswered for recreateTimeout, and the
// consumer comes back by serve's sweep, after which the next pull must not
// wait for that timeout.
func (r *runner) recreateConsumer(ctx context.Context, err error) {
	topo := r.a.topo
	if !topo.Config.MemoryConsumers || !errors.Is(err, nats.ErrNoResponders) {
		return
	}
	if r.recreating != nil {
		select {
		case <-r.recreating:
			r.recreating = nil
		default:
			return // one attempt at a time
		}
	}
	// At most once a second per runner: an agent that may not create
	// consumers waits for the dispatcher's sweep without a request storm.
	now := time.Now()
	if now.Sub(r.recreatedAt) < time.Second {
		return
	}
	r.recreatedAt = now
	name := queue.AnyConsumerName
	if r.partition >= 0 {
		name = queue.PartitionConsumerName(r.partition)
	}
	done := make(chan struct{})
	r.recreating = done
	go func() {
		defer close(done)
		cctx, cancel := context.WithTimeout(ctx, recreateTimeout)
		defer cancel()
		err := topo.RecreateConsumer(cctx, name)
		switch {
		case err == nil:
			r.a.log.Info("recreated memory-stored consumer (lost with a server restart)", zap.String("consumer", name))
		case ctx.Err() != nil:
		case errors.Is(err, context.DeadlineExceeded):
			r.a.log.Warn("recreate memory-stored consumer: no answer (is this agent's NATS user allowed to create consumers? "+
				"deploy/nats-server.conf's agent is not: dispatcher serve's sweep makes them); pulling meanwhile",
				zap.String("consumer", name), zap.Duration("waited", recreateTimeout))
		default:
			r.a.log.Warn("recreate memory-stored consumer", zap.String("consumer", name), zap.Error(err))
		}
	}()
}

// claimMargin is the part of a TTL a claim is not relied on for: the server
// counts a TTL from when it stored a write, after it was sent, but clocks
// may run at slightly different rates.
const claimMargin = 10

// pullDeadline returns until when this runner may pull: its partition may
// move to another agent once the lease expires or once this agent's
// registry entry does (survivors then take its leases at once; see
// queue.Topology.TakeLease). Both count from the last write that got
// through, as sent. owned is false once that time has passed. The anonymous
// runner owns nothing and may always pull.
func (r *runner) pullDeadline() (deadline time.Time, owned bool) {
	now := time.Now()
	if r.lease == nil {
		return now.Add(r.a.cfg.FetchWait), true
	}
	if r.leaseOK.Load() <= r.a.ag.beatLapse.Load() {
		// The registry entry may have expired since the lease was last
		// written: another agent may own the partition now.
		return now, false
	}
	q := r.a.cfg.Queue
	lease := r.a.at(r.leaseOK.Load()).Add(q.LeaseTTL - q.LeaseTTL/claimMargin)
	beat := r.a.beatDeadline()
	deadline = lease
	if beat.Before(deadline) {
		deadline = beat
	}
	// A pull shorter than this is not worth a request.
	return deadline, deadline.Sub(now) > 20*time.Millisecond
}

// beatDeadline is until when this agent's registry entry is sure to be
// alive in the others' eyes: AgentTTL (less the claim margin) after the
// last heartbeat that got through, as sent. Past it the others may count
// the agent as gone and take its partitions at once.
func (a *lane) beatDeadline() time.Time {
	ttl := a.cfg.Queue.AgentTTL
	return a.at(a.ag.beatOK.Load()).Add(ttl - ttl/claimMargin)
}

// maxPull bounds one pull request.
const maxPull = 256

// pull makes one pull request and dispatches what it brings. It returns the
// backlog the last message reported.
func (r *runner) pull(ctx context.Context, backlog int) (int, error) {
	a := r.a
	_, owned := r.pullDeadline()
	if !owned {
		// Our claim may have lapsed in the others' eyes: another agent
		// may take the partition now, so pull nothing until a heartbeat
		// or a renewal gets through again (or the lease is found lost).
		sleepCtx(ctx, 50*time.Millisecond)
		return 0, nil
	}
	want := 1
	if backlog > 0 {
		want = min(backlog, maxPull)
	}
	if r.partition < 0 && !r.shortJobs() {
		// Anonymous jobs that may run long are only taken for a free
		// worker, so that another agent's free worker gets them instead.
		want = min(want, a.pool.Free())
		if want <= 0 {
			// Look again when a held job ends (which frees its
			// worker), or after a while for workers freed otherwise
			// (a replacement became ready).
			a.held.waitChange(ctx, 20*time.Millisecond)
			return backlog, nil
		}
	}
	var msgs jetstream.MessageBatch
	var err error
	reserved := 0
	if backlog > 0 {
		// Wait until a few jobs fit, so that pulls stay batched; a pull
		// that returns at once never holds its reservation for long.
		reserved = a.held.reserve(ctx, max(a.capacity()/4, 1), want)
		if reserved == 0 {
			return 0, ctx.Err()
		}
		if _, owned = r.pullDeadline(); !owned {
			a.held.settle(reserved, 0)
			return backlog, nil
		}
		msgs, err = r.cons.FetchNoWait(reserved)
	} else {
		if !a.held.wait(ctx) {
			return 0, ctx.Err()
		}
		deadline, owned := r.pullDeadline()
		if !owned {
			return 0, nil
		}
		// A pull request still open when the claim lapses could deliver
		// to this agent what the partition's next owner should get, so
		// the server expires it by then. The client waits for the
		// server's word (its 408 at expiry, or the message) rather than
		// a deadline of its own, even when ctx ends: a message the
		// server sends just as a client-side deadline fires is dropped
		// by the client unacked, and comes back only after AckWait,
		// behind the later jobs of its session. One that arrives after
		// a drain began is naked at once by dispatch instead.
		wait := earliest(time.Now().Add(a.cfg.FetchWait), deadline).Sub(time.Now())
		if wait <= 0 {
			return 0, nil
		}
		// The anonymous runner asks for as many jobs as it has free
		// workers (at least one), so that a closed loop of lone jobs
		// finds this pull still open instead of waiting for a new one
		// after every job; a partition's runner asks for one.
		n := 1
		if r.partition < 0 {
			n = max(n, a.pool.Free())
		}
		msgs, err = r.cons.Fetch(n, jetstream.FetchMaxWait(wait))
	}
	got := 0
	backlog = 0
	if err == nil {
		for msg := range msgs.Messages() {
			if meta := r.dispatch(msg, reserved > 0); meta != nil {
				backlog = int(meta.NumPending)
			}
			got++
		}
		err = msgs.Error()
	}
	if reserved > 0 {
		a.held.settle(reserved, min(got, reserved))
	}
	return backlog, err
}

// shortPrefetch is the run time under which jobs count as short: an
// anonymous job held back behind one starts soon enough that pulling it
// ahead cannot starve another agent's free worker for long.
const shortPrefetch = 25 * time.Millisecond

// shortJobs reports whether this runner's recent jobs ran briefly.
func (r *runner) shortJobs() bool {
	avg := r.runAvg.Load()
	return avg > 0 && avg < int64(shortPrefetch)
}

// observeRun folds one job's run time into runAvg (weight 1/8; a race
// between two jobs loses one sample, which an average can afford).
func (r *runner) observeRun(d time.Duration) {
	r.a.observeCapacity(d)
	old := r.runAvg.Load()
	if old == 0 {
		r.runAvg.Store(max(int64(d), 1))
		return
	}
	r.runAvg.Store(max(old+(int64(d)-old)/8, 1))
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
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
// reserved says the gate already counts the job. It returns the message's
// metadata, nil if it has none.
func (r *runner) dispatch(msg jetstream.Msg, reserved bool) *jetstream.MsgMetadata {
	a := r.a
	if !reserved {
		a.held.add(1)
	}
	msg = crashableMsg{Msg: msg, killed: a.killed}
	j := newJob(r, msg)
	r.mu.Lock()
	if j.job != nil && j.job.Session != "" {
		j.prev = r.lastOf[j.job.Session]
	}
	if r.drained {
		r.mu.Unlock()
		_ = j.handBackInOrder()
		a.held.done(1)
		return j.meta
	}
	r.held[j] = struct{}{}
	if j.job != nil && j.job.Session != "" {
		r.sessions[j.job.Session] = struct{}{}
		r.lastOf[j.job.Session] = j
	}
	r.mu.Unlock()
	j.trackCancel()
	j.reserve()
	r.jobs.Add(1)
	a.crew.run(func() {
		j.run()
		if !j.handedOff {
			r.end(j)
		}
	})
	return j.meta
}

func (r *runner) forget(j *job) {
	r.mu.Lock()
	delete(r.held, j)
	if j.job != nil && r.lastOf[j.job.Session] == j {
		delete(r.lastOf, j.job.Session)
	}
	// A later job of the session needs this one's settled, not its
	// predecessor: unlink, so that no chain of ended jobs stays reachable.
	j.prev = nil
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
		j.keepAlive()
	}
}

// drain stops fetching, naks jobs that have not reached a worker, and waits
// for running jobs to finish. If ctx ends first, running calls are canceled
// and their jobs handed back as the waiting ones were (cutByDrain).
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
		r.cancelCalls()
		<-done
	}
	r.stopAcks()
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

// cancelCalls cancels the running calls of a drain that ran out of time,
// and the calls about to start (see cutByDrain).
func (r *runner) cancelCalls() {
	r.a.log.Warn("drain deadline: canceling running jobs", zap.Int("partition", r.partition))
	r.mu.Lock()
	for j := range r.held {
		j.cutByDrain()
	}
	r.mu.Unlock()
}

// wait blocks until the fetch loop and every job have ended (after Kill).
func (r *runner) wait() {
	r.fetchCancel()
	r.waitCancel()
	<-r.loopDone
	r.jobs.Wait()
	r.stopAcks()
}

// crashableMsg drops every verdict once the agent has been killed, so Kill
// behaves like the crash it stands for: whatever the agent held comes back
// only when its AckWait runs out, as it would after a real SIGKILL.
type crashableMsg struct {
	jetstream.Msg
	killed *atomic.Bool
}

func (m crashableMsg) Ack() error {
	if m.killed.Load() {
		return nil
	}
	return m.Msg.Ack()
}

func (m crashableMsg) Nak() error {
	if m.killed.Load() {
		return nil
	}
	return m.Msg.Nak()
}

func (m crashableMsg) NakWithDelay(d time.Duration) error {
	if m.killed.Load() {
		return nil
	}
	return m.Msg.NakWithDelay(d)
}

func (m crashableMsg) Term() error {
	if m.killed.Load() {
		return nil
	}
	return m.Msg.Term()
}

func (m crashableMsg) InProgress() error {
	if m.killed.Load() {
		return nil
	}
	return m.Msg.InProgress()
}
