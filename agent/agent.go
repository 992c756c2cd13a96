package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// ErrStopped is returned by Start after Stop or Kill.
var ErrStopped = errors.New("agent: stopped")

// lane is one queue an Agent serves: its topology (the queue's jobs stream
// and consumers), its pool, its partitions and leases, its capacity gate.
// The Agent owns what lanes share: the name, the registry entry, the micro
// service, the membership loop and the NATS connection.
type lane struct {
	ag   *Agent
	cfg  Config // this lane's: Queue is the queue's, Pool its pool
	nc   *nats.Conn
	log  *zap.Logger
	topo *queue.Topology
	pool *pool.Pool
	// deaths is the poison guard's bucket (see poison.go).
	deaths jetstream.KeyValue
	// leftFree holds the free deliveries of jobs this lane left unrun
	// (outage.go) until their redelivery has read them (free.go).
	leftFree leftFreeSet
	// cancels holds the cancels stream's ids, fed by cancelFeed (cancel.go).
	cancels    *cancelSet
	cancelFeed *queue.CancelFeed

	held     *gate
	capAdapt capAdapt // the adaptive default capacity (capacity.go)

	// baseCtx bounds everything the lane does; canceled by Kill and at the
	// end of Stop. Running calls use it, so a graceful Stop lets them finish.
	baseCtx    context.Context
	baseCancel context.CancelFunc
	// kaCtx stops the keep-alive loop, which must outlive draining.
	kaCtx    context.Context
	kaCancel context.CancelFunc
	kaLoop   sync.WaitGroup
	// crew runs the jobs (crew.go) and pub stores their results
	// (publisher.go); both closed once every job has ended.
	crew *crew
	pub  *publisher

	mu        sync.Mutex
	runners   map[int]*runner // by partition
	anyRunner *runner
	draining  sync.WaitGroup // drains started by rebalancing
	// handing are the runners released and still draining, by partition
	// (membership.go): kept alive, and their leases renewed while they
	// are handed over, until the drain ends.
	handing map[int]*runner
	// orphans are the partitions the last rebalance that read the lease
	// table found without a live owner (membership.go); only the
	// membership loop uses them.
	orphans map[int]bool

	started atomic.Bool
	killed  *atomic.Bool // the Agent's

	counters counters
	current  current // worker id -> the job it runs (dashboard)
	metrics  *laneMetrics
}

type counters struct {
	ok, appFailed, retried, exhausted, badRequest, sessionLost, checkoutErrs, canceled, leftUnrun, requeued atomic.Uint64
}

// record counts a job's outcome, and its duration where it reached a worker.
func (a *lane) record(outcome string, d time.Duration) {
	c := &a.counters
	switch outcome {
	case outcomeOK:
		c.ok.Add(1)
	case outcomeAppError:
		c.appFailed.Add(1)
	case outcomeRetried:
		c.retried.Add(1)
	case outcomeExhausted:
		c.exhausted.Add(1)
	case outcomeBadRequest:
		c.badRequest.Add(1)
	case outcomeSessionLost:
		c.sessionLost.Add(1)
	case outcomeCanceled:
		c.canceled.Add(1)
	case outcomeRequeued:
		c.requeued.Add(1)
	}
	series := a.metrics.outcome(outcome)
	series.jobs.Inc()
	if d > 0 {
		series.duration.Observe(d.Seconds())
	}
}

// Counters is a snapshot of what the agent has done with jobs.
type Counters struct {
	Succeeded, AppFailed, Retried, Exhausted, BadRequest, SessionLost, CheckoutErrors uint64
	// Canceled counts jobs ended by a cancel.
	Canceled uint64
	// Requeued counts jobs handed back unrun (a drain, a lapsed claim) or
	// left unrun for redelivery; LeftUnrun counts the latter alone: jobs
	// about to start once their ack wait had run out, NATS unreachable or
	// the agent paused meanwhile (see job.startVerdict).
	Requeued, LeftUnrun uint64
}

// newLane returns a lane of ag for cfg (already defaulted and validated).
func newLane(ag *Agent, cfg Config) (*lane, error) {
	p, err := pool.New(cfg.Pool)
	if err != nil {
		return nil, fmt.Errorf("agent: queue %s: %w", cfg.Queue.QueueName(), err)
	}
	a := &lane{
		ag:      ag,
		cfg:     cfg,
		nc:      ag.nc,
		log:     cfg.Logger.Named("agent").With(zap.String("agent", cfg.Name), zap.String("queue", cfg.Queue.QueueName())),
		pool:    p,
		held:    newGate(cfg.Capacity),
		runners: make(map[int]*runner),
		crew:    newCrew(),
		killed:  &ag.killed,
		metrics: ag.metrics.forQueue(cfg.Queue.QueueName()),
	}
	if cfg.adaptiveCapacity {
		a.capAdapt.floor, a.capAdapt.ceil = capacityBounds(cfg.Pool.Size)
		a.capAdapt.current.Store(int64(a.capAdapt.floor))
		a.held = newGate(a.capAdapt.floor)
	}
	a.baseCtx, a.baseCancel = context.WithCancel(ag.baseCtx)
	a.kaCtx, a.kaCancel = context.WithCancel(a.baseCtx)
	a.pub = newPublisher(a)
	return a, nil
}

// queueName is the lane's queue.
func (a *lane) queueName() string { return a.cfg.Queue.QueueName() }

// Counters returns what the lane has done so far.
func (a *lane) Counters() Counters {
	c := &a.counters
	return Counters{
		Succeeded: c.ok.Load(), AppFailed: c.appFailed.Load(), Retried: c.retried.Load(),
		Exhausted: c.exhausted.Load(), BadRequest: c.badRequest.Load(),
		SessionLost: c.sessionLost.Load(), CheckoutErrors: c.checkoutErrs.Load(),
		Canceled: c.canceled.Load(), Requeued: c.requeued.Load(), LeftUnrun: c.leftUnrun.Load(),
	}
}

// Partitions returns the partitions the lane holds now, sorted.
func (a *lane) Partitions() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ownedLocked()
}

// open opens (or creates) the lane's topology.
func (a *lane) open(ctx context.Context, js jetstream.JetStream) error {
	topo, err := a.openTopology(ctx, js)
	if err != nil {
		return fmt.Errorf("agent: queue %s: topology on %s: %w", a.queueName(), a.nc.ConnectedUrlRedacted(), err)
	}
	a.topo = topo
	// The server's topology is the truth (partition count, TTLs, AckWait):
	// derive the intervals that follow from it unless they were set.
	a.cfg.Queue = topo.Config
	a.cfg.deriveIntervals()
	// Cancels first: no job may be taken before the cancels stored so far
	// are known.
	if err := a.followCancels(ctx); err != nil {
		return fmt.Errorf("agent: queue %s: cancels: %w", a.queueName(), err)
	}
	return nil
}

// startPool starts the lane's workers and waits until they are ready.
func (a *lane) startPool(ctx context.Context) error {
	if err := a.pool.Start(ctx); err != nil {
		a.pool.Kill()
		return fmt.Errorf("agent: queue %s: start pool: %w", a.queueName(), err)
	}
	return nil
}

// run begins taking anonymous work and keeping held jobs alive; partitions
// come from the Agent's membership loop.
func (a *lane) run(ctx context.Context) error {
	anyCons, err := a.topo.AnyConsumer(ctx)
	if err != nil {
		return fmt.Errorf("agent: queue %s: anonymous consumer: %w", a.queueName(), err)
	}
	a.pub.run()
	a.mu.Lock()
	a.anyRunner = a.newRunner(-1, anyCons, nil, time.Time{})
	a.mu.Unlock()
	a.started.Store(true)
	a.kaLoop.Add(1)
	go a.keepAliveLoop()
	return nil
}

// openTopology opens the fleet's topology, creating it if it is missing.
// A topology found incomplete (the dispatcher is creating it right now) or
// that this agent may not create (least-privilege permissions: only the
// dispatcher may) is waited for, until ctx ends, so that agents and the
// dispatcher can start in any order.
func (a *lane) openTopology(ctx context.Context, js jetstream.JetStream) (*queue.Topology, error) {
	qcfg := a.cfg.Queue
	if a.cfg.derived.partitions {
		qcfg.Partitions = 0 // the stream's count (queue.Open, queue.Ensure)
	}
	for attempt := 0; ; attempt++ {
		topo, err := queue.Open(ctx, js, qcfg)
		if err == nil {
			// Open checks the streams; the consumers come last in Ensure.
			if _, err = topo.AnyConsumer(ctx); err == nil {
				if a.deaths, err = queue.OpenPoison(ctx, js, a.cfg.Queue); err == nil {
					if err = queue.OpenCancels(ctx, js, a.cfg.Queue); err == nil {
						return topo, nil
					}
				}
			}
		}
		if !errors.Is(err, queue.ErrNoTopology) {
			return nil, err
		}
		topo, err = queue.Ensure(ctx, js, qcfg)
		if err == nil {
			if a.deaths, err = queue.OpenPoison(ctx, js, a.cfg.Queue); err == nil {
				if err = queue.OpenCancels(ctx, js, a.cfg.Queue); err == nil {
					return topo, nil
				}
			}
		}
		if attempt == 0 {
			a.log.Warn("topology not found and not created here; waiting for the dispatcher to create it", zap.Error(err))
		}
		t := time.NewTimer(500 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (and creating it failed: %v)", queue.ErrNoTopology, err)
		case <-t.C:
		}
	}
}

// drain is a graceful stop's first part, once the membership loop has
// stopped: no more fetching, held-but-not-started jobs are naked, running
// ones finish (until ctx ends, when they are canceled and naked), and the
// leases are released.
func (a *lane) drain(ctx context.Context) {
	if !a.started.Load() {
		return
	}
	// Every partition is handed over: its lease is kept (renewed) until
	// its drain ends, also those of drains rebalancing started.
	rs := a.runnerList(true)
	for _, r := range rs {
		r.leaseMu.Lock()
		r.handover = true
		r.leaseMu.Unlock()
	}
	rctx, stopRenew := context.WithCancel(a.baseCtx)
	renewing := make(chan struct{})
	go func() {
		defer close(renewing)
		t := time.NewTicker(a.cfg.LeaseRenewInterval)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			a.renewHandovers(rctx, append(a.handingList(), rs...))
		}
	}()
	// The drains rebalancing started end with ctx too.
	handed := make(chan struct{})
	go func() {
		defer close(handed)
		a.draining.Wait()
	}()
	select {
	case <-handed:
	case <-ctx.Done():
		for _, r := range a.handingList() {
			r.cancelCalls()
		}
		<-handed
	}
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.drain(ctx)
		}()
	}
	wg.Wait()
	stopRenew()
	<-renewing
	a.kaCancel()
	a.kaLoop.Wait()

	// Release leases so survivors take over at once instead of after the
	// lease TTL.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, r := range rs {
		if r.lease != nil && !r.released {
			if e := a.topo.ReleaseLease(rctx, r.lease); e != nil {
				a.log.Warn("release lease", zap.Int("partition", r.partition), zap.Error(e))
			}
		}
	}
	a.mu.Lock()
	clear(a.runners)
	a.mu.Unlock()
}

// stopPool stops the workers, last.
func (a *lane) stopPool(ctx context.Context) error {
	defer a.baseCancel()
	a.crew.close()
	a.pub.close()
	a.stopCancels()
	return a.pool.Stop(ctx)
}

// kill ends the lane the way a crash would: workers are killed, nothing is
// acked, naked or released.
func (a *lane) kill() {
	a.baseCancel()
	a.kaLoop.Wait()
	rs := a.runnerList(true)
	a.pool.Kill()
	for _, r := range rs {
		r.wait()
	}
	a.draining.Wait()
	a.crew.close()
	a.pub.close()
	a.stopCancels()
}

// load is the lane's part of the registry entry.
func (a *lane) load() queue.QueueLoad {
	st := a.pool.Stats()
	return queue.QueueLoad{
		Queue: a.queueName(), Workers: st.Size, Busy: st.Busy, Idle: st.Idle, Sessions: st.Sessions,
		Partitions: a.Partitions(), Degraded: st.Degraded,
	}
}

// stamp and at are the Agent's (its heartbeats and the lane's lease
// writes share one monotonic epoch).
func (a *lane) stamp(t time.Time) int64 { return a.ag.stamp(t) }

func (a *lane) at(stamp int64) time.Time { return a.ag.at(stamp) }

// keepAliveLoop marks every held message InProgress, so jobs waiting for a
// worker or running long are not redelivered while this agent lives.
func (a *lane) keepAliveLoop() {
	defer a.kaLoop.Done()
	t := time.NewTicker(a.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-a.kaCtx.Done():
			return
		case <-t.C:
		}
		rs := append(a.runnerList(true), a.handingList()...)
		for _, r := range rs {
			r.touchHeld()
		}
	}
}

// runnerList returns the partition runners and, if withAny, the anonymous
// one: a snapshot to work on without holding a.mu.
func (a *lane) runnerList(withAny bool) []*runner {
	a.mu.Lock()
	defer a.mu.Unlock()
	rs := make([]*runner, 0, len(a.runners)+1)
	for _, r := range a.runners {
		rs = append(rs, r)
	}
	if withAny && a.anyRunner != nil {
		rs = append(rs, a.anyRunner)
	}
	return rs
}

// handingList returns the runners released and still draining.
func (a *lane) handingList() []*runner {
	a.mu.Lock()
	defer a.mu.Unlock()
	rs := make([]*runner, 0, len(a.handing))
	for _, r := range a.handing {
		rs = append(rs, r)
	}
	return rs
}
