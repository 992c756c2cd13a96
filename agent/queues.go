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

// Agent runs jobs from NATS on local pools, one per queue it serves. Create
// it with New, run it with Start, end it with Stop (graceful) or Kill (as if
// the process died).
//
// One Agent is one name in the registry, one micro service and one
// membership loop, whatever the number of queues; each queue (a lane) has
// its own pool, partitions, leases, consumers and capacity.
type Agent struct {
	cfg   Config
	nc    *nats.Conn
	log   *zap.Logger
	lanes []*lane

	// baseCtx bounds everything; canceled by Kill and at the end of Stop.
	baseCtx    context.Context
	baseCancel context.CancelFunc
	// loopCtx stops the membership loop.
	loopCtx    context.Context
	loopCancel context.CancelFunc
	loops      sync.WaitGroup

	startOnce sync.Once
	stopOnce  sync.Once
	started   atomic.Bool
	killed    atomic.Bool
	done      chan struct{}
	startedAt time.Time

	// reg is the registry as the agents bucket watch shows it; kick asks
	// the membership loop for a rebalance.
	reg  registry
	kick chan struct{}
	// beatOK is when the last heartbeat that got through was sent (see
	// stamp).
	beatOK atomic.Int64
	// beatLapse is the latest moment (a stamp) at which this agent's
	// registry entry may have expired: two heartbeats that got through
	// were further apart than the claim (the agent was paused, or cut off
	// without noticing). The others may have taken its partitions then,
	// so a lease last written before it is no claim (runner.pullDeadline)
	// until a renewal gets through again; renewSoon asks the membership
	// loop for that renewal at once.
	beatLapse atomic.Int64
	renewSoon atomic.Bool
	// epoch anchors stamp on the monotonic clock.
	epoch time.Time

	metrics *metrics
	svc     micro.Service
}

// New validates cfg and returns an Agent that has not started. nc belongs to
// the caller and must outlive the agent.
func New(nc *nats.Conn, cfg Config) (*Agent, error) {
	if nc == nil {
		return nil, errors.New("agent: nil NATS connection")
	}
	if cfg.Name == "" {
		h, _ := os.Hostname()
		cfg.Name = sanitizeToken(fmt.Sprintf("%s-%d", h, os.Getpid()))
	}
	lcs, err := cfg.laneConfigs()
	if err != nil {
		return nil, err
	}
	cfg = lcs[0]
	a := &Agent{
		cfg:   cfg,
		nc:    nc,
		log:   cfg.Logger.Named("agent").With(zap.String("agent", cfg.Name)),
		done:  make(chan struct{}),
		kick:  make(chan struct{}, 1),
		epoch: time.Now(),
	}
	a.metrics = newMetrics()
	a.baseCtx, a.baseCancel = context.WithCancel(context.Background())
	a.loopCtx, a.loopCancel = context.WithCancel(a.baseCtx)
	for _, lc := range lcs {
		l, err := newLane(a, lc)
		if err != nil {
			a.baseCancel()
			return nil, err
		}
		a.lanes = append(a.lanes, l)
	}
	if cfg.Registerer != nil {
		if err := a.metrics.register(cfg.Registerer, a); err != nil {
			a.baseCancel()
			return nil, fmt.Errorf("agent: metrics: %w", err)
		}
	}
	return a, nil
}

// Name is the agent's name.
func (a *Agent) Name() string { return a.cfg.Name }

// Queues lists the queues the agent serves, in configuration order.
func (a *Agent) Queues() []string {
	out := make([]string, len(a.lanes))
	for i, l := range a.lanes {
		out[i] = l.queueName()
	}
	return out
}

func (a *Agent) lane(queueName string) *lane {
	queueName = queue.NameOrDefault(queueName)
	for _, l := range a.lanes {
		if l.queueName() == queueName {
			return l
		}
	}
	return nil
}

// Pool is the local pool of the agent's first queue.
func (a *Agent) Pool() *pool.Pool { return a.lanes[0].pool }

// QueuePool is the local pool of queue, nil if the agent does not serve it.
func (a *Agent) QueuePool(queueName string) *pool.Pool {
	if l := a.lane(queueName); l != nil {
		return l.pool
	}
	return nil
}

// Topology is the NATS topology of the agent's first queue (nil before
// Start).
func (a *Agent) Topology() *queue.Topology { return a.lanes[0].topo }

// Done is closed when the agent has stopped.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Counters returns what the agent has done so far, over all its queues.
func (a *Agent) Counters() Counters {
	var c Counters
	for _, l := range a.lanes {
		lc := l.Counters()
		c.Succeeded += lc.Succeeded
		c.AppFailed += lc.AppFailed
		c.Retried += lc.Retried
		c.Exhausted += lc.Exhausted
		c.BadRequest += lc.BadRequest
		c.SessionLost += lc.SessionLost
		c.CheckoutErrors += lc.CheckoutErrors
		c.Canceled += lc.Canceled
		c.Requeued += lc.Requeued
		c.LeftUnrun += lc.LeftUnrun
	}
	return c
}

// Partitions returns the partitions of the agent's first queue it holds now,
// sorted.
func (a *Agent) Partitions() []int { return a.lanes[0].Partitions() }

// QueuePartitions returns the partitions of queue the agent holds now.
func (a *Agent) QueuePartitions(queueName string) []int {
	if l := a.lane(queueName); l != nil {
		return l.Partitions()
	}
	return nil
}

// Start opens (or creates) each queue's topology, starts the pools and waits
// until their workers are ready, registers the agent and begins taking
// work. It returns once the agent is running; the work goes on until Stop or
// Kill.
func (a *Agent) Start(ctx context.Context) error {
	err := ErrStopped
	a.startOnce.Do(func() { err = a.start(ctx) })
	return err
}

func (a *Agent) start(ctx context.Context) error {
	if a.baseCtx.Err() != nil {
		return ErrStopped
	}
	js, err := jetstream.New(a.nc)
	if err != nil {
		return fmt.Errorf("agent: jetstream: %w", err)
	}
	for _, l := range a.lanes {
		if err := l.open(ctx, js); err != nil {
			for _, l := range a.lanes {
				l.stopCancels()
			}
			return err
		}
	}
	// Every lane shares the registry and the leases bucket: the intervals
	// that follow from their TTLs are the same for all.
	a.cfg = a.lanes[0].cfg
	killPools := func() {
		for _, l := range a.lanes {
			l.pool.Kill()
		}
	}
	// Pools start together: a GPU host's slow model server does not hold up
	// its small workers. Meanwhile the name is claimed (claimName): an
	// agent restarted after a crash waits there for its predecessor's entry
	// to expire, as its workers start.
	errs := make([]error, len(a.lanes))
	sctx, cancelStart := context.WithCancel(ctx)
	defer cancelStart()
	var claimErr error
	var claimed uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if claimed, claimErr = a.claimName(sctx); claimErr != nil {
			cancelStart()
		}
	}()
	for i, l := range a.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if errs[i] = l.startPool(sctx); errs[i] != nil {
				cancelStart()
			}
		}()
	}
	wg.Wait()
	// The first failure cancels the rest: its error is the one to tell.
	err = errors.Join(errs...)
	if err == nil || errors.Is(claimErr, ErrNameInUse) {
		err = claimErr
	}
	if err != nil {
		killPools()
		for _, l := range a.lanes {
			l.stopCancels()
		}
		return err
	}
	a.startedAt = time.Now()
	if err := a.register(ctx, claimed); err != nil {
		killPools()
		for _, l := range a.lanes {
			l.stopCancels()
		}
		return err
	}
	a.started.Store(true)
	for _, l := range a.lanes {
		if err := l.run(ctx); err != nil {
			a.abort()
			return err
		}
	}
	svc, err := a.startService()
	if err != nil {
		a.abort()
		return fmt.Errorf("agent: micro service: %w", err)
	}
	a.svc = svc

	a.loops.Add(3)
	go a.registryLoop()
	go a.heartbeatLoop()
	go a.membershipLoop()
	for _, l := range a.lanes {
		a.log.Info("agent started", zap.String("queue", l.queueName()), zap.Int("workers", l.cfg.Pool.Size), zap.Int("capacity", l.cfg.Capacity))
	}
	return nil
}

// Stop shuts the agent down gracefully: it stops taking partitions and
// fetching, naks jobs it holds but has not started, lets running jobs finish
// (until ctx ends, when they are canceled and naked), releases its leases,
// leaves the registry and stops the pools. Safe to call more than once, and
// before Start.
func (a *Agent) Stop(ctx context.Context) error {
	var err error
	a.stopOnce.Do(func() {
		defer close(a.done)
		defer a.baseCancel()
		if !a.started.Load() {
			a.baseCancel()
			a.startOnce.Do(func() {})
			var errs []error
			for _, l := range a.lanes {
				errs = append(errs, l.stopPool(ctx))
			}
			err = errors.Join(errs...)
			return
		}
		// 1. Stop being discoverable and taking partitions.
		if a.svc != nil {
			_ = a.svc.Stop()
		}
		a.loopCancel()
		a.loops.Wait()

		// 2-4. Every queue at once: no more fetching, held-but-not-started
		// jobs are naked, running ones finish, leases are released. Until
		// then the agent stays in the registry, and lane.drain keeps its
		// leases: a session whose job still runs here does not move.
		bctx, stopBeats := context.WithCancel(a.baseCtx)
		beating := make(chan struct{})
		go func() {
			defer close(beating)
			a.beat(bctx)
		}()
		a.eachLane(func(l *lane) error { l.drain(ctx); return nil })
		stopBeats()
		<-beating

		// 5. Leave the registry, so survivors count this agent out.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if e := a.lanes[0].topo.RemoveAgent(rctx, a.cfg.Name); e != nil {
			a.log.Warn("leave registry", zap.Error(e))
		}

		// 6. Stop the workers.
		err = a.eachLane(func(l *lane) error { return l.stopPool(ctx) })
		a.log.Info("agent stopped")
	})
	return err
}

// eachLane runs fn on every lane at once and joins the errors.
func (a *Agent) eachLane(fn func(*lane) error) error {
	errs := make([]error, len(a.lanes))
	var wg sync.WaitGroup
	for i, l := range a.lanes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(l)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
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
		for _, l := range a.lanes {
			l.kill()
		}
		close(a.done)
	})
}

// abort undoes a start that failed half-way, as a crash would.
func (a *Agent) abort() {
	a.killed.Store(true)
	a.started.Store(false)
	a.baseCancel()
	for _, l := range a.lanes {
		if l.started.Load() {
			l.kill()
		} else {
			l.pool.Kill()
			l.stopCancels()
		}
	}
}

// info is the registry entry for this agent: one load per queue, and their
// sums.
func (a *Agent) info() *queue.AgentInfo {
	host, _ := os.Hostname()
	in := &queue.AgentInfo{
		Name: a.cfg.Name, Host: host, PID: os.Getpid(),
		StartedAt: a.startedAt, UpdatedAt: time.Now(),
	}
	for _, l := range a.lanes {
		ld := l.load()
		in.Queues = append(in.Queues, ld)
		in.Workers += ld.Workers
		in.Busy += ld.Busy
		in.Idle += ld.Idle
		in.Sessions += ld.Sessions
		in.Degraded = in.Degraded || ld.Degraded
		if ld.Queue == queue.DefaultQueue {
			in.Partitions = ld.Partitions
		}
	}
	return in
}

func (a *Agent) heartbeat(ctx context.Context) error {
	sent := time.Now()
	if err := a.lanes[0].topo.Heartbeat(ctx, a.info()); err != nil {
		return err
	}
	a.beatGotThrough(sent)
	return nil
}

// beatGotThrough records that a registry write sent at sent got through.
// The heartbeat loop and Agent.stepDownIfRefused's check may both write:
// the later sending time wins.
func (a *Agent) beatGotThrough(sent time.Time) {
	st := a.stamp(sent)
	ttl := a.cfg.Queue.AgentTTL
	claim := int64(ttl - ttl/claimMargin)
	for {
		old := a.beatOK.Load()
		if st <= old {
			return
		}
		if !a.beatOK.CompareAndSwap(old, st) {
			continue
		}
		if old > 0 && st-old > claim {
			if lapse := old + claim; lapse > a.beatLapse.Load() {
				a.beatLapse.Store(lapse)
			}
			a.renewSoon.Store(true)
			a.kickRebalance()
		}
		return
	}
}

// stamp turns t into a number for an atomic, on the monotonic clock, so
// that a step of the wall clock cannot stretch a claim; at turns it back.
func (a *Agent) stamp(t time.Time) int64 { return int64(t.Sub(a.epoch)) }

func (a *Agent) at(stamp int64) time.Time { return a.epoch.Add(time.Duration(stamp)) }
