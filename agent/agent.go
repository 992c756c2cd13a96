package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// ErrStopped is returned by Start after Stop or Kill.
var ErrStopped = errors.New("agent: stopped")

// Agent runs jobs from NATS on a local pool. Create it with New, run it with
// Start, end it with Stop (graceful) or Kill (as if the process died).
type Agent struct {
	cfg  Config
	nc   *nats.Conn
	log  *zap.Logger
	topo *queue.Topology
	pool *pool.Pool
	// deaths is the poison guard's bucket (see poison.go).
	deaths jetstream.KeyValue
	// cancels holds the cancels stream's ids, fed by cancelFeed (cancel.go).
	cancels    *cancelSet
	cancelFeed *queue.CancelFeed

	held     *gate
	capAdapt capAdapt // the adaptive default capacity (capacity.go)

	// baseCtx bounds everything the agent does; canceled by Kill and at the
	// end of Stop. Running calls use it, so a graceful Stop lets them finish.
	baseCtx    context.Context
	baseCancel context.CancelFunc
	// loopCtx stops the membership loop.
	loopCtx    context.Context
	loopCancel context.CancelFunc
	loops      sync.WaitGroup
	// kaCtx stops the keep-alive loop, which must outlive draining.
	kaCtx    context.Context
	kaCancel context.CancelFunc
	kaLoop   sync.WaitGroup

	// reg is the registry as the agents bucket watch shows it; kick asks
	// the membership loop for a rebalance.
	reg  registry
	kick chan struct{}
	// beatOK is when the last heartbeat that got through was sent (see
	// stamp).
	beatOK atomic.Int64
	// epoch anchors stamp on the monotonic clock.
	epoch time.Time

	mu        sync.Mutex
	runners   map[int]*runner // by partition
	anyRunner *runner
	draining  sync.WaitGroup // drains started by rebalancing

	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
	killed    atomic.Bool
	done      chan struct{}
	startedAt time.Time

	counters counters
	current  current // worker id -> the job it runs (dashboard)
	metrics  *metrics
	svc      micro.Service
}

type counters struct {
	ok, appFailed, retried, exhausted, badRequest, sessionLost, checkoutErrs, canceled atomic.Uint64
}

// record counts a job's outcome, and its duration where it reached a worker.
func (a *Agent) record(outcome string, d time.Duration) {
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
	}
	a.metrics.jobs.WithLabelValues(outcome).Inc()
	if d > 0 {
		a.metrics.duration.WithLabelValues(outcome).Observe(d.Seconds())
	}
}

// Counters is a snapshot of what the agent has done with jobs.
type Counters struct {
	Succeeded, AppFailed, Retried, Exhausted, BadRequest, SessionLost, CheckoutErrors uint64
	// Canceled counts jobs ended by a cancel.
	Canceled uint64
}

// New validates cfg and returns an Agent that has not started. nc belongs to
// the caller and must outlive the agent.
func New(nc *nats.Conn, cfg Config) (*Agent, error) {
	if nc == nil {
		return nil, errors.New("agent: nil NATS connection")
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p, err := pool.New(cfg.Pool)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{
		cfg:     cfg,
		nc:      nc,
		log:     cfg.Logger.Named("agent").With(zap.String("agent", cfg.Name)),
		pool:    p,
		held:    newGate(cfg.Capacity),
		runners: make(map[int]*runner),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		epoch:   time.Now(),
	}
	if cfg.adaptiveCapacity {
		a.capAdapt.floor, a.capAdapt.ceil = capacityBounds(cfg.Pool.Size)
		a.capAdapt.current.Store(int64(a.capAdapt.floor))
		a.held = newGate(a.capAdapt.floor)
	}
	a.metrics = newMetrics(a)
	if cfg.Registerer != nil {
		if err := a.metrics.register(cfg.Registerer, a); err != nil {
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
	}
	a.baseCtx, a.baseCancel = context.WithCancel(context.Background())
	a.loopCtx, a.loopCancel = context.WithCancel(a.baseCtx)
	a.kaCtx, a.kaCancel = context.WithCancel(a.baseCtx)
	return a, nil
}

// Name is the agent's name.
func (a *Agent) Name() string { return a.cfg.Name }

// Pool is the agent's local pool.
func (a *Agent) Pool() *pool.Pool { return a.pool }

// Topology is the NATS topology the agent uses (nil before Start).
func (a *Agent) Topology() *queue.Topology { return a.topo }

// Done is closed when the agent has stopped.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Counters returns what the agent has done so far.
func (a *Agent) Counters() Counters {
	c := &a.counters
	return Counters{
		Succeeded: c.ok.Load(), AppFailed: c.appFailed.Load(), Retried: c.retried.Load(),
		Exhausted: c.exhausted.Load(), BadRequest: c.badRequest.Load(),
		SessionLost: c.sessionLost.Load(), CheckoutErrors: c.checkoutErrs.Load(),
		Canceled: c.canceled.Load(),
	}
}

// Partitions returns the partitions the agent holds now, sorted.
func (a *Agent) Partitions() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ownedLocked()
}

// Start opens (or creates) the topology, starts the pool and waits until its
// workers are ready, registers the agent and begins taking work. It returns
// once the agent is running; the work goes on until Stop or Kill.
func (a *Agent) Start(ctx context.Context) error {
	err := ErrStopped
	a.startOnce.Do(func() { err = a.start(ctx) })
	return err
}

func (a *Agent) start(ctx context.Context) (err error) {
	if a.baseCtx.Err() != nil {
		return ErrStopped
	}
	defer func() {
		if err != nil {
			a.stopCancels()
		}
	}()
	js, err := jetstream.New(a.nc)
	if err != nil {
		return fmt.Errorf("agent: jetstream: %w", err)
	}
	topo, err := a.openTopology(ctx, js)
	if err != nil {
		return fmt.Errorf("agent: topology on %s: %w", a.nc.ConnectedUrlRedacted(), err)
	}
	a.topo = topo
	// The server's topology is the truth (partition count, TTLs, AckWait):
	// derive the intervals that follow from it unless they were set.
	a.cfg.Queue = topo.Config
	a.cfg.deriveIntervals()
	// Cancels first: no job may be taken before the cancels stored so far
	// are known.
	if err := a.followCancels(ctx); err != nil {
		return fmt.Errorf("agent: cancels: %w", err)
	}
	if err := a.pool.Start(ctx); err != nil {
		a.pool.Kill()
		return fmt.Errorf("agent: start pool: %w", err)
	}
	a.startedAt = time.Now()
	if err := a.heartbeat(ctx); err != nil {
		a.pool.Kill()
		return fmt.Errorf("agent: register: %w", err)
	}
	a.started.Store(true)

	anyCons, err := topo.AnyConsumer(ctx)
	if err != nil {
		a.pool.Kill()
		return fmt.Errorf("agent: anonymous consumer: %w", err)
	}
	a.mu.Lock()
	a.anyRunner = a.newRunner(-1, anyCons, nil, time.Time{})
	a.mu.Unlock()

	svc, err := a.startService()
	if err != nil {
		a.pool.Kill()
		return fmt.Errorf("agent: micro service: %w", err)
	}
	a.svc = svc

	a.loops.Add(3)
	go a.registryLoop()
	go a.heartbeatLoop()
	go a.membershipLoop()
	a.kaLoop.Add(1)
	go a.keepAliveLoop()
	a.log.Info("agent started", zap.Int("workers", a.cfg.Pool.Size), zap.Int("capacity", a.cfg.Capacity))
	return nil
}

// openTopology opens the fleet's topology, creating it if it is missing.
// A topology found incomplete (the dispatcher is creating it right now) or
// that this agent may not create (least-privilege permissions: only the
// dispatcher may) is waited for, until ctx ends, so that agents and the
// dispatcher can start in any order.
func (a *Agent) openTopology(ctx context.Context, js jetstream.JetStream) (*queue.Topology, error) {
	for attempt := 0; ; attempt++ {
		topo, err := queue.Open(ctx, js, a.cfg.Queue)
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
		topo, err = queue.Ensure(ctx, js, a.cfg.Queue)
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

// Stop shuts the agent down gracefully: it stops taking partitions and
// fetching, naks jobs it holds but has not started, lets running jobs finish
// (until ctx ends, when they are canceled and naked), releases its leases,
// leaves the registry and stops the pool. Safe to call more than once, and
// before Start.
func (a *Agent) Stop(ctx context.Context) error {
	var err error
	a.stopOnce.Do(func() {
		defer close(a.done)
		defer a.baseCancel()
		if !a.started.Load() {
			a.baseCancel()
			a.startOnce.Do(func() {})
			err = a.pool.Stop(ctx)
			return
		}
		// 1. Stop being discoverable, taking partitions and renewing anything.
		if a.svc != nil {
			_ = a.svc.Stop()
		}
		a.loopCancel()
		a.loops.Wait()
		a.draining.Wait()

		// 2-3. Drain every runner: no more fetching, held-but-not-started
		// jobs are naked, running ones finish.
		rs := a.runnerList(true)
		var wg sync.WaitGroup
		for _, r := range rs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r.drain(ctx)
			}()
		}
		wg.Wait()
		a.kaCancel()
		a.kaLoop.Wait()

		// 4. Release leases so survivors take over at once instead of after
		// the lease TTL, and leave the registry.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		for _, r := range rs {
			if r.lease != nil {
				if e := a.topo.ReleaseLease(rctx, r.lease); e != nil {
					a.log.Warn("release lease", zap.Int("partition", r.partition), zap.Error(e))
				}
			}
		}
		if e := a.topo.RemoveAgent(rctx, a.cfg.Name); e != nil {
			a.log.Warn("leave registry", zap.Error(e))
		}
		a.mu.Lock()
		clear(a.runners)
		a.mu.Unlock()

		// 5. Stop the workers.
		a.stopCancels()
		err = a.pool.Stop(ctx)
		a.log.Info("agent stopped")
	})
	return err
}

// Kill ends the agent the way a crash would, for failure tests: workers are
// killed, nothing is acked, naked or released. Leases expire on their own and
// unacked jobs are redelivered after AckWait.
func (a *Agent) Kill() {
	a.killed.Store(true)
	a.stopOnce.Do(func() {
		a.startOnce.Do(func() {})
		a.baseCancel()
		if a.svc != nil {
			_ = a.svc.Stop()
		}
		a.loops.Wait()
		a.kaLoop.Wait()
		rs := a.runnerList(true)
		a.pool.Kill()
		for _, r := range rs {
			r.wait()
		}
		a.draining.Wait()
		a.stopCancels()
		close(a.done)
	})
}

// info is the registry entry for this agent.
func (a *Agent) info() *queue.AgentInfo {
	st := a.pool.Stats()
	host, _ := os.Hostname()
	return &queue.AgentInfo{
		Name: a.cfg.Name, Host: host, PID: os.Getpid(),
		StartedAt: a.startedAt, UpdatedAt: time.Now(),
		Workers: st.Size, Busy: st.Busy, Idle: st.Idle, Sessions: st.Sessions,
		Partitions: a.Partitions(), Degraded: st.Degraded,
	}
}

func (a *Agent) heartbeat(ctx context.Context) error {
	sent := time.Now()
	if err := a.topo.Heartbeat(ctx, a.info()); err != nil {
		return err
	}
	a.beatOK.Store(a.stamp(sent))
	return nil
}

// stamp turns t into a number for an atomic, on the monotonic clock, so
// that a step of the wall clock cannot stretch a claim; at turns it back.
func (a *Agent) stamp(t time.Time) int64 { return int64(t.Sub(a.epoch)) }

func (a *Agent) at(stamp int64) time.Time { return a.epoch.Add(time.Duration(stamp)) }

// keepAliveLoop marks every held message InProgress, so jobs waiting for a
// worker or running long are not redelivered while this agent lives.
func (a *Agent) keepAliveLoop() {
	defer a.kaLoop.Done()
	t := time.NewTicker(a.cfg.ProgressInterval)
	defer t.Stop()
	for {
		select {
		case <-a.kaCtx.Done():
			return
		case <-t.C:
		}
		rs := a.runnerList(true)
		for _, r := range rs {
			r.touchHeld()
		}
	}
}

// runnerList returns the partition runners and, if withAny, the anonymous
// one: a snapshot to work on without holding a.mu.
func (a *Agent) runnerList(withAny bool) []*runner {
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
