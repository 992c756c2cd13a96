package pool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker"
)

type poolState uint8

const (
	stNew      poolState = iota // New returned, Start not called
	stRunning                   // taking checkouts
	stStopping                  // Stop: no new checkouts, in-flight leases finishing
	stStopped                   // Kill, or Stop past draining: workers being stopped
)

// Pool is an agent's local pool of subprocess workers. All methods are safe
// for concurrent use.
//
// Everything mutable lives under one mutex: checkouts are short critical
// sections (pick a worker, link a ticket), and all I/O with a worker (calls,
// pings, session_end, stopping) happens outside it.
type Pool struct {
	cfg   Config
	log   *zap.Logger
	epoch time.Time // origin of the pool's monotonic clock (now)
	tick  int64     // longest the supervisor sleeps; see newTick

	mu       sync.Mutex
	state    poolState
	closed   bool // no more goroutines may be spawned (shutdown collected the workers)
	slots    []*slot
	stopping map[*pw]struct{} // removed or retired workers not yet reaped

	sessions     map[string]*session
	idleSessions sessList // sessions with nothing running or queued, oldest first (expiry order)
	anyQ         ticketQueue
	nWaiters     int
	seq          uint64

	nStarting  int
	busy       int
	workerSeq  int
	readyCount int
	nextWake   int64 // when the supervisor will next look; wakeAtLocked kicks it for earlier needs
	inMaintain bool
	drained    chan struct{} // Stop waits on it for busy workers; closed when busy hits 0

	// counters for Stats, under mu
	restarts      uint64
	startFailures uint64
	consecutive   int
	backoff       time.Duration
	lastError     string
	removed       uint64
	recycled      uint64
	waitTotal     time.Duration
	waitMax       time.Duration

	// bumped outside mu on the checkout path
	checkouts      atomic.Uint64
	checkoutErrors atomic.Uint64

	ready chan struct{}
	done  chan struct{}
	kick  chan struct{}
	quit  chan struct{}

	// runCtx bounds the lifetime of background work (graceful stops of
	// retired workers); startCtx aborts starts in flight; opCtx aborts pings;
	// killCtx turns a graceful shutdown into a kill.
	runCtx      context.Context
	runCancel   context.CancelFunc
	startCtx    context.Context
	startCancel context.CancelFunc
	opCtx       context.Context
	opCancel    context.CancelFunc
	killCtx     context.Context
	killCancel  context.CancelFunc

	wg           sync.WaitGroup // every goroutine the pool starts
	shutdownOnce sync.Once
}

// New returns a pool that starts no worker until Start.
func New(cfg Config) (*Pool, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Pool{
		cfg:      cfg,
		log:      cfg.Logger.Named("pool").With(zap.String("pool", cfg.Name)),
		epoch:    time.Now(),
		slots:    make([]*slot, cfg.Size),
		stopping: make(map[*pw]struct{}),
		sessions: make(map[string]*session),
		ready:    make(chan struct{}),
		done:     make(chan struct{}),
		kick:     make(chan struct{}, 1),
		quit:     make(chan struct{}),
	}
	if p.cfg.Worker.Logger == nil {
		p.cfg.Worker.Logger = p.log
	}
	p.tick = newTick(&p.cfg)
	p.idleSessions.link = idleLink
	for i := range p.slots {
		p.slots[i] = &slot{cold: true}
	}
	p.runCtx, p.runCancel = context.WithCancel(context.Background())
	p.startCtx, p.startCancel = context.WithCancel(p.runCtx)
	p.opCtx, p.opCancel = context.WithCancel(p.runCtx)
	p.killCtx, p.killCancel = context.WithCancel(context.Background())
	return p, nil
}

// newTick is the supervisor's longest sleep: the shortest of the periodic
// limits. Any deadline that appears later is then at least a tick away, so
// the hot path (a session or a worker going idle) never has to wake it.
func newTick(c *Config) int64 {
	tick := time.Hour
	for _, d := range []time.Duration{c.SessionIdleTTL, c.HealthInterval, c.TTL, c.IdleTTL} {
		if d > 0 && d < tick {
			tick = d
		}
	}
	return int64(tick)
}

// now is the pool's monotonic clock in nanoseconds: one cheap clock read, no
// wall-clock time.
func (p *Pool) now() int64 { return int64(time.Since(p.epoch)) }

// Start starts the pool. Eager (the default): it starts every worker, at most
// StartConcurrency at once, and waits until all are ready or ctx ends; the
// error then says how many were ready. Lazy: it returns at once. Either way
// background starts and replacements go on after Start returns, until Stop.
func (p *Pool) Start(ctx context.Context) error {
	p.mu.Lock()
	switch p.state {
	case stRunning:
		p.mu.Unlock()
		return fmt.Errorf("pool: Start called twice")
	case stStopping, stStopped:
		p.mu.Unlock()
		return ErrPoolStopped
	}
	p.state = stRunning
	if !p.cfg.Lazy {
		for _, s := range p.slots {
			s.cold = false
		}
	}
	p.wg.Add(1)
	go p.supervise()
	p.startDueLocked(p.now())
	p.mu.Unlock()
	p.log.Info("pool started", zap.Int("size", p.cfg.Size), zap.Bool("lazy", p.cfg.Lazy))
	if p.cfg.Lazy {
		return nil
	}
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return ErrPoolStopped
	case <-ctx.Done():
		p.mu.Lock()
		n := p.readyCount
		p.mu.Unlock()
		return fmt.Errorf("pool: start: %d of %d workers ready: %w", n, p.cfg.Size, ctx.Err())
	}
}

// Ready is closed once every one of the Size workers has been ready at least
// once.
func (p *Pool) Ready() <-chan struct{} { return p.ready }

// Done is closed when the pool has stopped: every worker reaped, every
// goroutine ended.
func (p *Pool) Done() <-chan struct{} { return p.done }

// Stop stops the pool gracefully, in this order: stop taking checkouts and
// fail the waiting ones with ErrPoolStopped (idle workers start stopping at
// once); let leases out finish until ctx ends; stop every worker (shutdown
// frame, EOF, SIGTERM, SIGKILL; straight to SIGKILL once ctx has ended); wait
// for every goroutine. It returns nil, or an error wrapping ctx.Err() when ctx
// cut the sequence short. Stop is idempotent and safe before Start.
func (p *Pool) Stop(ctx context.Context) error {
	p.mu.Lock()
	switch p.state {
	case stNew:
		p.state = stStopped
		p.mu.Unlock()
		p.shutdown(ctx, false)
		return nil
	case stRunning:
		p.beginStopLocked(stStopping)
		drained := p.drained
		p.mu.Unlock()
		if drained != nil {
			select {
			case <-drained:
			case <-ctx.Done():
			case <-p.killCtx.Done():
			}
		}
		p.shutdown(ctx, false)
	default:
		p.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			p.Kill()
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pool: stop: %w", err)
	}
	return nil
}

// Kill stops the pool now: waiters fail with ErrPoolStopped, every worker's
// process group is SIGKILLed (calls in flight fail), and Kill returns once
// all are reaped and every goroutine has ended. It is idempotent, and turns a
// Stop in progress into a kill.
func (p *Pool) Kill() {
	p.mu.Lock()
	if p.state == stNew || p.state == stRunning {
		p.beginStopLocked(stStopped)
	}
	p.state = stStopped
	p.mu.Unlock()
	p.killCancel()
	p.shutdown(context.Background(), true)
}

// beginStopLocked stops taking work: aborts starts and pings, fails every
// waiter, and stops idle workers (gracefully unless killing).
func (p *Pool) beginStopLocked(next poolState) {
	p.state = next
	p.startCancel()
	p.opCancel()
	for t := p.anyQ.head; t != nil; t = p.anyQ.head {
		p.failLocked(t, ErrPoolStopped, nil, "", 0)
	}
	for _, s := range p.sessions {
		for t := s.q.head; t != nil; t = s.q.head {
			p.failLocked(t, ErrPoolStopped, nil, "", 0)
		}
	}
	if next == stStopping {
		for _, sl := range p.slots {
			if W := sl.w; W != nil && W.state == wIdle {
				p.retireLocked(W, false, 0)
			}
		}
	}
	if p.busy > 0 && p.drained == nil {
		p.drained = make(chan struct{})
	}
}

// shutdown runs once: it stops or kills every worker still around, ends the
// supervisor and waits for every goroutine.
func (p *Pool) shutdown(ctx context.Context, kill bool) {
	p.shutdownOnce.Do(func() {
		p.mu.Lock()
		p.state = stStopped
		p.closed = true
		var ws []*worker.Worker
		for _, sl := range p.slots {
			if sl.w != nil {
				ws = append(ws, sl.w.w)
			}
		}
		for W := range p.stopping {
			ws = append(ws, W.w)
		}
		p.mu.Unlock()
		close(p.quit)

		stopCtx, cancel := context.WithCancel(ctx)
		unhook := context.AfterFunc(p.killCtx, cancel)
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if kill {
					w.Kill()
				} else if err := w.Stop(stopCtx); err != nil {
					p.log.Warn("worker stop cut short", zap.String("worker", w.ID()), zap.Error(err))
				}
			}()
		}
		wg.Wait()
		unhook()
		cancel()
		p.runCancel()
		p.wg.Wait()
		p.killCancel()
		p.log.Info("pool stopped")
		close(p.done)
	})
	<-p.done
}
