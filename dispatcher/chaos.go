package dispatcher

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// ErrJobsLost is returned by RunChaos when a job the stream accepted never
// got a result. It is the one outcome the fleet must never produce.
var ErrJobsLost = errors.New("dispatcher: chaos: accepted jobs have no result")

// ChaosConfig configures RunChaos. Every zero field takes its default.
type ChaosConfig struct {
	// Duration is how long load runs while faults are injected. Default 60s.
	Duration time.Duration
	// Agents is how many in-process agents run (each with its own NATS
	// connection, as separate processes would have). Default 3; at most
	// one is down at any time, so at least 2 makes failover visible.
	Agents int
	// Workers is each agent's pool size. Default 2.
	Workers int
	// Sessions is how many sessions the load spreads its session jobs over.
	// Default 40.
	Sessions int
	// Rate is how many jobs are submitted per second. Default 100.
	Rate int
	// AnonymousShare is the share of jobs submitted without a session, in
	// [0,1]. Default 0.2; negative means none.
	AnonymousShare float64
	// FaultInterval is the mean time between two faults. Default 1s.
	FaultInterval time.Duration
	// AgentFaultShare is the share of faults that kill a whole agent rather
	// than one worker, in [0,1]. Default 0.25; negative means none.
	AgentFaultShare float64
	// MaxDownTime bounds how long a killed agent stays down before it
	// restarts (uniformly from a tenth of it). Default twice Queue.AgentTTL,
	// so that some victims stay away long enough for the survivors to take
	// their partitions, while others come back before anyone notices.
	MaxDownTime time.Duration
	// WorkerCmd is every worker's argv. Required.
	WorkerCmd []string
	// WorkerEnv is the workers' environment; nil inherits this process's.
	WorkerEnv []string
	// ExecLog is a file the workers append one line to per call they start,
	// "<job_id> <attempt> <pid> [<session>]" (testworker.ExecLog writes
	// it). When set, "executed more than once" counts real executions;
	// when empty it counts jobs delivered more than once (result attempt >
	// 1), which over-counts deliveries that never reached a worker.
	ExecLog string
	// Command is every job's command. Default "echo".
	Command string
	// Payload is every job's payload. Default {}.
	Payload json.RawMessage
	// Queue is the fleet's NATS configuration. Zero fields take queue's
	// defaults, which are what the failover figure is measured against.
	Queue queue.Config
	// DrainTimeout bounds the wait for outstanding results once load and
	// faults have stopped. Default 3m.
	DrainTimeout time.Duration
	// Seed makes the fault and load schedule repeatable. Default 0 picks one
	// at random (the report prints it).
	Seed uint64
	// Out receives the report; Progress a line per fault. Defaults stdout
	// and io.Discard.
	Out, Progress io.Writer
	// Logger receives the server's and the agents' logs. Default none.
	Logger *zap.Logger
}

func (c *ChaosConfig) setDefaults() error {
	if c.Duration == 0 {
		c.Duration = time.Minute
	}
	if c.Agents == 0 {
		c.Agents = 3
	}
	if c.Workers == 0 {
		c.Workers = 2
	}
	if c.Sessions == 0 {
		c.Sessions = 40
	}
	if c.Rate == 0 {
		c.Rate = 100
	}
	if c.AnonymousShare == 0 {
		c.AnonymousShare = 0.2
	}
	c.AnonymousShare = max(c.AnonymousShare, 0)
	if c.FaultInterval == 0 {
		c.FaultInterval = time.Second
	}
	if c.AgentFaultShare == 0 {
		c.AgentFaultShare = 0.25
	}
	c.AgentFaultShare = max(c.AgentFaultShare, 0)
	if c.Command == "" {
		c.Command = "echo"
	}
	if c.Payload == nil {
		c.Payload = json.RawMessage(`{}`)
	}
	c.Queue = c.Queue.WithDefaults()
	if c.MaxDownTime == 0 {
		c.MaxDownTime = 2 * c.Queue.AgentTTL
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 3 * time.Minute
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	var errs []error
	if c.Duration < 0 {
		errs = append(errs, errors.New("dispatcher: chaos: Duration cannot be negative"))
	}
	if c.Agents < 1 {
		errs = append(errs, errors.New("dispatcher: chaos: Agents must be at least 1"))
	}
	if c.Workers < 1 {
		errs = append(errs, errors.New("dispatcher: chaos: Workers must be at least 1"))
	}
	if c.Sessions < 1 {
		errs = append(errs, errors.New("dispatcher: chaos: Sessions must be at least 1"))
	}
	if c.Rate < 1 {
		errs = append(errs, errors.New("dispatcher: chaos: Rate must be at least 1"))
	}
	if c.AnonymousShare > 1 || c.AgentFaultShare > 1 {
		errs = append(errs, errors.New("dispatcher: chaos: AnonymousShare and AgentFaultShare must be at most 1"))
	}
	if c.FaultInterval < 0 || c.MaxDownTime < 0 || c.DrainTimeout < 0 {
		errs = append(errs, errors.New("dispatcher: chaos: FaultInterval, MaxDownTime and DrainTimeout cannot be negative"))
	}
	if len(c.WorkerCmd) == 0 {
		errs = append(errs, errors.New("dispatcher: chaos: WorkerCmd is required"))
	}
	if !json.Valid(c.Payload) {
		errs = append(errs, errors.New("dispatcher: chaos: Payload is not valid JSON"))
	}
	if err := c.Queue.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ChaosReport is what a chaos run found. Every accepted job is reconciled
// against the results stream, the workers' execution log (when there is
// one) and the faults injected.
type ChaosReport struct {
	Seed     uint64
	Duration time.Duration // load time
	Agents   int
	Workers  int

	WorkerKills   int // single workers SIGKILLed
	AgentKills    int // agents killed the way a crash would (connection first)
	AgentRestarts int

	Accepted int // jobs the stream acknowledged
	Rejected int // jobs never accepted (their publish kept failing); not lost
	OK       int
	Failed   map[string]int // results with ok:false, by error kind
	// Lost are accepted jobs without a result; LostIDs lists up to 20.
	Lost    int
	LostIDs []string

	// ExecCounted says whether Repeated counts executions (from ExecLog)
	// or deliveries (from result attempts).
	ExecCounted bool
	// Repeated is how many jobs ran more than once; RepeatedAfterKill how
	// many of them had every earlier run on a worker that was then killed
	// (the at-least-once cost of a crash). The rest were re-run although
	// no kill cut them short (an agent killed between result and ack, or a
	// redelivery while still running).
	Repeated          int
	RepeatedAfterKill int

	// AffinityBreaks counts consecutive jobs of one session that ran on
	// different (agent, worker). Each is traced to a cause in
	// BreaksByCause: "worker killed", "agent killed" (the session's worker
	// died with its agent), "rebalance" (the session's partition changed
	// owner in between). Untraced are breaks with none of these: bugs.
	AffinityBreaks int
	BreaksByCause  map[string]int
	Untraced       int
	// RebindWithoutNewSession counts bindings (a session's jobs on one
	// worker) where no job told the worker new_session=true: a bug. With an
	// execution log, a binding is excused when another job of the session
	// also ran on that worker but its stored result is from an earlier run
	// elsewhere (an agent died between storing a result and acking it; the
	// rerun's result, which carried new_session, was deduplicated away).
	RebindWithoutNewSession int
	// Reordered counts session jobs whose final run came before the final
	// run of an earlier job of their session: the job before was retried
	// after a fault and ran after its successor. Counted from the execution
	// log; -1 without one.
	Reordered int

	// Failovers are, per agent kill, the time from the kill until every
	// partition the agent held was leased again (by a survivor, or by the
	// agent itself restarted under its old name).
	Failovers       []time.Duration
	LongestFailover time.Duration
}

// RunChaos starts an embedded NATS server with JetStream in a temporary
// directory and cfg.Agents in-process agents, submits load for
// cfg.Duration while killing random workers (SIGKILL) and agents (crash:
// the NATS connection is cut before anything is cleaned up) and restarting
// them, then waits for every accepted job and reconciles. It prints the
// report to cfg.Out and returns it; the error wraps ErrJobsLost when an
// accepted job has no result.
func RunChaos(ctx context.Context, cfg ChaosConfig) (*ChaosReport, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	_, url, stopServer, err := embedded.StartTemp(ctx, "procfleet-chaos-", cfg.Logger.Named("nats"))
	if err != nil {
		return nil, err
	}
	defer stopServer()
	nc, err := nats.Connect(url, nats.Name("procfleet-chaos"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("dispatcher: chaos: connect %s: %w", url, err)
	}
	defer nc.Close()
	client, err := EnsureClient(ctx, nc, cfg.Queue)
	if err != nil {
		return nil, err
	}
	r := &chaosRun{
		cfg: cfg, url: url, client: client, topo: client.Topology(),
		killedPIDs: map[int]string{},
		leaseOwner: map[int]leaseState{},
		jobs:       map[string]*chaosJob{},
		start:      time.Now(),
	}
	defer r.stopAgents()
	return r.run(ctx)
}

type chaosRun struct {
	cfg    ChaosConfig
	url    string
	client *Client
	topo   *queue.Topology
	start  time.Time

	agents []*chaosAgent // one per slot; a slot's agent is nil while down

	mu         sync.Mutex
	events     []chaosEvent
	killedPIDs map[int]string // pid -> "worker killed" or "agent killed"
	leaseOwner map[int]leaseState
	leaseLog   []leaseChange
	kills      []agentKill
	jobs       map[string]*chaosJob
	rejected   int
}

type chaosAgent struct {
	slot     int
	name     string
	a        *agent.Agent
	nc       *nats.Conn
	downTill time.Time // while down: when to restart
	gen      int
}

type chaosEvent struct {
	At    time.Time
	Kind  string // "worker-kill", "agent-kill", "agent-start"
	Agent string
	PIDs  []int
}

type chaosJob struct {
	ID, Session string
	Seq         uint64 // stream sequence: the session's order
}

type leaseState struct {
	owner string
	rev   uint64
}

// leaseChange is a partition changing hands (owner "" when the lease was
// deleted or expired).
type leaseChange struct {
	at        time.Time
	partition int
	owner     string
	changed   bool // the owner differs from the previous one
}

// agentKill remembers what a killed agent held, to time its failover.
type agentKill struct {
	at         time.Time
	agent      string
	partitions []int
}

func (r *chaosRun) progress(format string, args ...any) {
	fmt.Fprintf(r.cfg.Progress, "%7.2fs  %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, args...))
}

func (r *chaosRun) run(ctx context.Context) (*ChaosReport, error) {
	cfg := r.cfg
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan error, 1)
	ready := make(chan struct{})
	go func() { watchDone <- r.watchLeases(watchCtx, ready) }()
	stopWatching := func() error {
		stopWatch()
		return <-watchDone
	}
	select {
	case <-ready:
	case err := <-watchDone:
		stopWatch()
		return nil, fmt.Errorf("dispatcher: chaos: watch leases: %w", err)
	}

	r.agents = make([]*chaosAgent, cfg.Agents)
	for i := range r.agents {
		r.agents[i] = &chaosAgent{slot: i + 1, name: fmt.Sprintf("agent-%d", i+1)}
		if err := r.startAgent(ctx, r.agents[i]); err != nil {
			_ = stopWatching()
			return nil, err
		}
	}
	if err := waitSpread(ctx, r.liveAgents(), cfg.Queue.Partitions); err != nil {
		_ = stopWatching()
		return nil, err
	}
	col, err := r.client.Collect()
	if err != nil {
		_ = stopWatching()
		return nil, err
	}
	defer col.Close()

	fmt.Fprintf(cfg.Progress, "chaos: %s of load at %d jobs/s on %d agents x %d workers, a fault every ~%s (seed %d)\n",
		cfg.Duration, cfg.Rate, cfg.Agents, cfg.Workers, cfg.FaultInterval, cfg.Seed)
	loadCtx, stopLoad := context.WithTimeout(ctx, cfg.Duration)
	defer stopLoad()
	loadDone := make(chan struct{})
	go func() {
		defer close(loadDone)
		r.load(loadCtx, col)
	}()
	faultErr := r.faults(loadCtx)
	<-loadDone
	if faultErr == nil {
		faultErr = r.restartAll(ctx)
	}
	if faultErr != nil {
		_ = stopWatching()
		return nil, faultErr
	}

	r.mu.Lock()
	accepted := len(r.jobs)
	r.mu.Unlock()
	fmt.Fprintf(cfg.Progress, "chaos: load and faults stopped; waiting for %d results\n", accepted)
	dctx, cancel := context.WithTimeout(ctx, cfg.DrainTimeout)
	werr := col.Wait(dctx, nil)
	cancel()
	if werr != nil && ctx.Err() != nil {
		_ = stopWatching()
		return nil, ctx.Err()
	}
	if err := stopWatching(); err != nil && !errors.Is(err, context.Canceled) {
		return nil, fmt.Errorf("dispatcher: chaos: watch leases: %w", err)
	}
	rep, err := r.reconcile(ctx)
	if err != nil {
		return nil, err
	}
	rep.write(cfg.Out)
	if rep.Lost > 0 {
		return rep, fmt.Errorf("%w: %d of %d (e.g. %s)", ErrJobsLost, rep.Lost, rep.Accepted, strings.Join(rep.LostIDs, ", "))
	}
	return rep, nil
}

// watchLeases records every change of partition ownership. Renewals (the
// same owner at a new revision) only update the revision.
func (r *chaosRun) watchLeases(ctx context.Context, ready chan<- struct{}) error {
	w, err := r.topo.Leases.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("lease watcher closed")
			}
			if e == nil {
				close(ready)
				continue
			}
			p, err := strconv.Atoi(strings.TrimPrefix(e.Key(), "p-"))
			if err != nil {
				continue
			}
			owner := ""
			if e.Operation() == jetstream.KeyValuePut {
				owner = string(e.Value())
			}
			r.mu.Lock()
			prev := r.leaseOwner[p]
			r.leaseOwner[p] = leaseState{owner: owner, rev: e.Revision()}
			// Renewals are logged too (changed false): an agent restarted
			// under its old name takes its lease over with an Update, which
			// looks just like one.
			r.leaseLog = append(r.leaseLog, leaseChange{at: e.Created(), partition: p, owner: owner, changed: prev.owner != owner})
			r.mu.Unlock()
		}
	}
}

func (r *chaosRun) agentConfig(name string) agent.Config {
	cfg := agent.Config{Name: name, Queue: r.cfg.Queue, Logger: r.cfg.Logger}
	cfg.Pool.Size = r.cfg.Workers
	cfg.Pool.Worker = worker.Config{Command: r.cfg.WorkerCmd, Env: r.cfg.WorkerEnv, StartupTimeout: 30 * time.Second}
	return cfg
}

func (r *chaosRun) startAgent(ctx context.Context, ca *chaosAgent) error {
	nc, err := nats.Connect(r.url, nats.Name("procfleet-chaos-"+ca.name), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("dispatcher: chaos: connect agent %s: %w", ca.name, err)
	}
	a, err := agent.New(nc, r.agentConfig(ca.name))
	if err != nil {
		nc.Close()
		return err
	}
	// Stamped before Start: the agent may take leases before Start returns.
	at := time.Now()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := a.Start(sctx); err != nil {
		a.Kill()
		nc.Close()
		return fmt.Errorf("dispatcher: chaos: start agent %s: %w", ca.name, err)
	}
	ca.a, ca.nc = a, nc
	r.mu.Lock()
	r.events = append(r.events, chaosEvent{At: at, Kind: "agent-start", Agent: ca.name})
	r.mu.Unlock()
	return nil
}

func (r *chaosRun) liveAgents() []*agent.Agent {
	var out []*agent.Agent
	for _, ca := range r.agents {
		if ca.a != nil {
			out = append(out, ca.a)
		}
	}
	return out
}

// stopAgents stops every live agent gracefully at the end of the run.
func (r *chaosRun) stopAgents() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, ca := range r.agents {
		if ca == nil || ca.a == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = ca.a.Stop(ctx)
			ca.nc.Close()
		}()
	}
	wg.Wait()
}

// faults injects a fault every ~FaultInterval until ctx ends, and restarts
// killed agents when their down time is over. It runs on one goroutine, so
// the agent slots need no lock.
func (r *chaosRun) faults(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 1))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	next := time.Now().Add(r.jitter(rng, r.cfg.FaultInterval))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := time.Now()
		for _, ca := range r.agents {
			if ca.a == nil && now.After(ca.downTill) {
				// Half the restarts come back under the old name, like a
				// restarted host; the others join as a new agent.
				ca.gen++
				if rng.IntN(2) == 0 {
					ca.name = fmt.Sprintf("agent-%d-r%d", ca.slot, ca.gen)
				}
				if err := r.startAgent(ctx, ca); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				r.progress("restarted %s", ca.name)
			}
		}
		if now.Before(next) || r.cfg.FaultInterval == 0 {
			continue
		}
		next = now.Add(r.jitter(rng, r.cfg.FaultInterval))
		if rng.Float64() < r.cfg.AgentFaultShare && r.cfg.Agents > 1 && r.allUp() {
			r.killAgent(r.agents[rng.IntN(len(r.agents))], rng)
		} else {
			r.killWorker(rng)
		}
	}
}

// jitter returns d scaled by a random factor in [0.5, 1.5).
func (r *chaosRun) jitter(rng *rand.Rand, d time.Duration) time.Duration {
	return d/2 + time.Duration(rng.Int64N(int64(d)+1))
}

func (r *chaosRun) allUp() bool {
	for _, ca := range r.agents {
		if ca.a == nil {
			return false
		}
	}
	return true
}

func (r *chaosRun) killWorker(rng *rand.Rand) {
	live := r.liveAgents()
	if len(live) == 0 {
		return
	}
	a := live[rng.IntN(len(live))]
	var busy, any []int
	for _, w := range a.Pool().Stats().Workers {
		if w.PID <= 0 {
			continue
		}
		any = append(any, w.PID)
		if w.State == "busy" {
			busy = append(busy, w.PID)
		}
	}
	// Prefer a busy worker: killing one mid-call is the interesting case.
	pids := busy
	if len(pids) == 0 {
		pids = any
	}
	if len(pids) == 0 {
		return
	}
	pid := pids[rng.IntN(len(pids))]
	r.mu.Lock()
	r.killedPIDs[pid] = "worker killed"
	r.events = append(r.events, chaosEvent{At: time.Now(), Kind: "worker-kill", Agent: a.Name(), PIDs: []int{pid}})
	r.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
		r.progress("SIGKILL worker pid %d of %s", pid, a.Name())
	}
}

// killAgent crashes an agent: its NATS connection goes first, so nothing
// it would do on the way down (naks, results, lease releases) reaches the
// server, then its workers are killed.
func (r *chaosRun) killAgent(ca *chaosAgent, rng *rand.Rand) {
	var pids []int
	for _, w := range ca.a.Pool().Stats().Workers {
		if w.PID > 0 {
			pids = append(pids, w.PID)
		}
	}
	at := time.Now()
	r.mu.Lock()
	for _, pid := range pids {
		r.killedPIDs[pid] = "agent killed"
	}
	r.events = append(r.events, chaosEvent{At: at, Kind: "agent-kill", Agent: ca.name, PIDs: pids})
	r.mu.Unlock()
	ca.nc.Close()
	ca.a.Kill()
	var held []int
	r.mu.Lock()
	for p, st := range r.leaseOwner {
		if st.owner == ca.name {
			held = append(held, p)
		}
	}
	r.kills = append(r.kills, agentKill{at: at, agent: ca.name, partitions: held})
	r.mu.Unlock()
	down := r.cfg.MaxDownTime/10 + time.Duration(rng.Int64N(int64(r.cfg.MaxDownTime)*9/10+1))
	ca.a, ca.nc, ca.downTill = nil, nil, time.Now().Add(down)
	r.progress("killed %s (%d workers, %d partitions); restart in %s", ca.name, len(pids), len(held), down.Round(time.Millisecond))
}

// restartAll brings every killed agent back once load has stopped, so that
// the jobs still queued can finish.
func (r *chaosRun) restartAll(ctx context.Context) error {
	for _, ca := range r.agents {
		if ca.a == nil {
			if err := r.startAgent(ctx, ca); err != nil {
				return err
			}
			r.progress("restarted %s", ca.name)
		}
	}
	return nil
}

// load submits jobs at cfg.Rate until ctx ends. A publish that fails is
// retried under the same id (the stream deduplicates), so a job counts as
// accepted exactly once.
func (r *chaosRun) load(ctx context.Context, col *Collector) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 2))
	const tick = 20 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	run := strconv.FormatUint(r.cfg.Seed%1e6, 36)
	var n int
	var retry []*chaosJob
	owed := 0.0
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.rejected += len(retry)
			r.mu.Unlock()
			return
		case <-t.C:
		}
		owed += float64(r.cfg.Rate) * tick.Seconds()
		batch := retry
		retry = nil
		for ; owed >= 1; owed-- {
			n++
			j := &chaosJob{ID: fmt.Sprintf("c%s-%d", run, n)}
			if rng.Float64() >= r.cfg.AnonymousShare {
				j.Session = fmt.Sprintf("s%d", rng.IntN(r.cfg.Sessions))
			}
			batch = append(batch, j)
		}
		retry = r.submit(batch, col)
	}
}

// submit publishes a batch and returns the jobs whose publish failed. The
// acks are awaited even after load has ended, so that the last batch is
// counted too.
func (r *chaosRun) submit(batch []*chaosJob, col *Collector) (failed []*chaosJob) {
	futures := make([]jetstream.PubAckFuture, len(batch))
	for i, j := range batch {
		f, err := r.topo.SubmitAsync(j.Session, &queue.Job{ID: j.ID, Command: r.cfg.Command, Payload: r.cfg.Payload})
		if err != nil {
			failed = append(failed, j)
			continue
		}
		futures[i] = f
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			batch[i].Seq = ack.Sequence
			col.Expect(batch[i].ID)
			r.mu.Lock()
			r.jobs[batch[i].ID] = batch[i]
			r.mu.Unlock()
		case <-f.Err():
			failed = append(failed, batch[i])
		case <-timeout.C:
			// Not known to be accepted: retried under the same id, which
			// the stream deduplicates if it was.
			failed = append(failed, published(batch, futures, i)...)
			return failed
		}
	}
	return failed
}

// published returns the jobs of batch from index i on that were
// published.
func published(batch []*chaosJob, futures []jetstream.PubAckFuture, i int) []*chaosJob {
	var out []*chaosJob
	for ; i < len(batch); i++ {
		if futures[i] != nil {
			out = append(out, batch[i])
		}
	}
	return out
}

// execution is one line of the workers' execution log.
type execution struct {
	attempt int
	pid     int
	line    int // position in the log: the order calls started in
}

func readExecLog(path string) (map[string][]execution, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]execution{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]execution{}
	sc := bufio.NewScanner(f)
	for line := 0; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		attempt, err1 := strconv.Atoi(fields[1])
		pid, err2 := strconv.Atoi(fields[2])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("dispatcher: chaos: exec log line %q is malformed", sc.Text())
		}
		out[fields[0]] = append(out[fields[0]], execution{attempt: attempt, pid: pid, line: line})
	}
	return out, sc.Err()
}

// ReadResults reads every result stored in the fleet's results stream, by
// job id, in the order they were stored. It reads the stream rather than
// listening, so it sees results stored while nobody was subscribed.
func ReadResults(ctx context.Context, topo *queue.Topology) (map[string][]*queue.Result, error) {
	out := map[string][]*queue.Result{}
	info, err := topo.Results.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: read results: %w", err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return out, nil
	}
	cons, err := topo.JS.OrderedConsumer(ctx, topo.Config.ResultsStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("dispatcher: read results: %w", err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("dispatcher: read results: %w", err)
		}
		n := 0
		var seq uint64
		for m := range batch.Messages() {
			n++
			if meta, err := m.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			var res queue.Result
			if err := json.Unmarshal(m.Data(), &res); err != nil || res.ID == "" {
				continue
			}
			out[res.ID] = append(out[res.ID], &res)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("dispatcher: read results: %w", err)
		}
		if seq >= last {
			return out, nil
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// Messages older than MaxAge may have gone since Info.
			return out, nil
		}
	}
}

func (r *chaosRun) reconcile(ctx context.Context) (*ChaosReport, error) {
	results, err := ReadResults(ctx, r.topo)
	if err != nil {
		return nil, err
	}
	var execs map[string][]execution
	if r.cfg.ExecLog != "" {
		if execs, err = readExecLog(r.cfg.ExecLog); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &ChaosReport{
		Seed: r.cfg.Seed, Duration: r.cfg.Duration, Agents: r.cfg.Agents, Workers: r.cfg.Workers,
		Accepted: len(r.jobs), Rejected: r.rejected,
		Failed: map[string]int{}, BreaksByCause: map[string]int{},
		ExecCounted: execs != nil,
	}
	for _, e := range r.events {
		switch e.Kind {
		case "worker-kill":
			rep.WorkerKills++
		case "agent-kill":
			rep.AgentKills++
		case "agent-start":
			rep.AgentRestarts++
		}
	}
	rep.AgentRestarts -= r.cfg.Agents

	final := map[string]*queue.Result{}
	ids := make([]string, 0, len(r.jobs))
	for id := range r.jobs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rs := results[id]
		if len(rs) == 0 {
			rep.Lost++
			if len(rep.LostIDs) < 20 {
				rep.LostIDs = append(rep.LostIDs, id)
			}
			continue
		}
		res := rs[0]
		final[id] = res
		if res.OK {
			rep.OK++
		} else {
			kind := "unknown"
			if res.Error != nil {
				kind = res.Error.Kind
			}
			rep.Failed[kind]++
		}
		if execs == nil {
			if res.Attempt > 1 {
				rep.Repeated++
			}
			continue
		}
		if ex := execs[id]; len(ex) > 1 {
			rep.Repeated++
			explained := true
			for _, e := range ex[:len(ex)-1] {
				if _, ok := r.killedPIDs[e.pid]; !ok {
					explained = false
				}
			}
			if explained {
				rep.RepeatedAfterKill++
			}
		}
	}
	r.traceAffinity(rep, final, execs)
	rep.Reordered = r.countReordered(final, execs)
	r.timeFailovers(rep)
	return rep, nil
}

// countReordered counts session jobs whose final run started (in the
// execution log's order) before the final run of the job before them.
func (r *chaosRun) countReordered(final map[string]*queue.Result, execs map[string][]execution) int {
	if execs == nil {
		return -1
	}
	bySession := map[string][]*chaosJob{}
	for _, j := range r.jobs {
		if j.Session != "" && final[j.ID] != nil && len(execs[j.ID]) > 0 {
			bySession[j.Session] = append(bySession[j.Session], j)
		}
	}
	n := 0
	for _, js := range bySession {
		slices.SortFunc(js, func(a, b *chaosJob) int { return cmp.Compare(a.Seq, b.Seq) })
		last := func(j *chaosJob) int { ex := execs[j.ID]; return ex[len(ex)-1].line }
		for i := 1; i < len(js); i++ {
			if last(js[i]) < last(js[i-1]) {
				n++
			}
		}
	}
	return n
}

// traceAffinity groups every session's jobs into bindings, the runs on one
// worker (agent and pid), and explains each move from one binding to the
// next. Bindings are ordered by their first job's start; within a binding
// the worker runs jobs in order, so its first job must carry new_session.
func (r *chaosRun) traceAffinity(rep *ChaosReport, final map[string]*queue.Result, execs map[string][]execution) {
	type binding struct {
		agent        string
		pid          int
		first, last  time.Time // first start, last finish
		freshStarted bool      // some job told the worker new_session=true
	}
	bySession := map[string][]*chaosJob{}
	for _, j := range r.jobs {
		if j.Session != "" && final[j.ID] != nil && final[j.ID].OK {
			bySession[j.Session] = append(bySession[j.Session], j)
		}
	}
	for session, js := range bySession {
		slices.SortFunc(js, func(a, b *chaosJob) int { return cmp.Compare(a.Seq, b.Seq) })
		var bs []*binding
		for _, j := range js {
			res := final[j.ID]
			k := slices.IndexFunc(bs, func(b *binding) bool { return b.agent == res.Agent && b.pid == res.WorkerPID })
			if k < 0 {
				bs = append(bs, &binding{agent: res.Agent, pid: res.WorkerPID, first: res.StartedAt, last: res.FinishedAt})
				k = len(bs) - 1
			}
			b := bs[k]
			if res.StartedAt.Before(b.first) {
				b.first = res.StartedAt
			}
			if res.FinishedAt.After(b.last) {
				b.last = res.FinishedAt
			}
			b.freshStarted = b.freshStarted || res.NewSession
		}
		slices.SortFunc(bs, func(a, b *binding) int { return a.first.Compare(b.first) })
		partition := r.topo.PartitionOf(session)
		for i, b := range bs {
			if !b.freshStarted && !rerunHere(js, final, execs, b.pid) {
				rep.RebindWithoutNewSession++
			}
			if i == 0 {
				continue
			}
			rep.AffinityBreaks++
			prev := bs[i-1]
			cause := r.breakCause(partition, prev.pid, prev.last, b.first)
			if cause == "" {
				rep.Untraced++
				continue
			}
			rep.BreaksByCause[cause]++
		}
	}
}

// rerunHere reports whether one of the session's jobs ran on worker pid
// although its stored result came from another worker.
func rerunHere(js []*chaosJob, final map[string]*queue.Result, execs map[string][]execution, pid int) bool {
	for _, j := range js {
		if final[j.ID].WorkerPID == pid {
			continue
		}
		for _, e := range execs[j.ID] {
			if e.pid == pid {
				return true
			}
		}
	}
	return false
}

// breakCause names why a session left worker pid (its last job
// there finished at left) for another (first job started at came), or ""
// when nothing explains it.
func (r *chaosRun) breakCause(partition, pid int, left, came time.Time) string {
	if how, ok := r.killedPIDs[pid]; ok {
		return how
	}
	// The lease watcher's times come from the server, and a result's
	// started_at is taken before the job waits for its worker: allow for
	// both around the handover.
	const slack = time.Second
	from, to := left, came
	if came.Before(left) {
		from, to = came, left
	}
	from, to = from.Add(-slack), to.Add(slack)
	for _, c := range r.leaseLog {
		if c.changed && c.partition == partition && !c.at.Before(from) && !c.at.After(to) {
			return "rebalance"
		}
	}
	return ""
}

// timeFailovers measures, per agent kill, how long until every partition
// the victim held had a new lease.
func (r *chaosRun) timeFailovers(rep *ChaosReport) {
	for _, k := range r.kills {
		// A lease write under the victim's name only counts once the victim
		// was started again: before that it is a renewal that was in flight
		// when it died.
		back := time.Time{}
		for _, e := range r.events {
			if e.Kind == "agent-start" && e.Agent == k.agent && e.At.After(k.at) {
				back = e.At
				break
			}
		}
		var longest time.Duration
		for _, p := range k.partitions {
			var took time.Duration = -1
			for _, c := range r.leaseLog {
				if c.partition != p || c.owner == "" || !c.at.After(k.at) {
					continue
				}
				if c.owner != k.agent || (!back.IsZero() && c.at.After(back)) {
					took = c.at.Sub(k.at)
					break
				}
			}
			if took < 0 {
				// Never re-leased: report the whole rest of the run, which
				// the reader will see as the outlier it is.
				took = time.Since(k.at)
			}
			longest = max(longest, took)
		}
		rep.Failovers = append(rep.Failovers, longest)
		rep.LongestFailover = max(rep.LongestFailover, longest)
	}
}

func (rep *ChaosReport) write(w io.Writer) {
	fmt.Fprintf(w, "\nprocfleet chaos report (seed %d)\n", rep.Seed)
	fmt.Fprintf(w, "  load:              %s on %d agents x %d workers\n", rep.Duration, rep.Agents, rep.Workers)
	fmt.Fprintf(w, "  faults:            %d worker kills, %d agent kills, %d agent restarts\n", rep.WorkerKills, rep.AgentKills, rep.AgentRestarts)
	failed := 0
	var kinds []string
	for k, n := range rep.Failed {
		failed += n
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(kinds)
	fmt.Fprintf(w, "  jobs:              %d accepted, %d ok, %d failed%s (%d never accepted)\n",
		rep.Accepted, rep.OK, failed, parenList(kinds), rep.Rejected)
	fmt.Fprintf(w, "  lost:              %d%s\n", rep.Lost, parenList(rep.LostIDs))
	if rep.ExecCounted {
		fmt.Fprintf(w, "  repeated:          %d executed more than once: %d after a kill cut the earlier run short, %d otherwise  [from the workers' execution log]\n",
			rep.Repeated, rep.RepeatedAfterKill, rep.Repeated-rep.RepeatedAfterKill)
	} else {
		fmt.Fprintf(w, "  repeated:          %d delivered more than once  [from result attempts: without an execution log, runs a kill cut short and deliveries that never reached a worker look alike]\n",
			rep.Repeated)
	}
	var causes []string
	for c, n := range rep.BreaksByCause {
		causes = append(causes, fmt.Sprintf("%s %d", c, n))
	}
	slices.Sort(causes)
	causes = append(causes, fmt.Sprintf("untraced %d", rep.Untraced))
	fmt.Fprintf(w, "  affinity breaks:   %d (%s); %d rebinds without new_session\n", rep.AffinityBreaks, strings.Join(causes, ", "), rep.RebindWithoutNewSession)
	if rep.Reordered >= 0 {
		fmt.Fprintf(w, "  reordered:         %d session jobs ran before an earlier job of their session that a fault sent back for a retry\n", rep.Reordered)
	}
	if len(rep.Failovers) == 0 {
		fmt.Fprintf(w, "  failover:          no agent was killed\n")
	} else {
		fmt.Fprintf(w, "  failover:          longest %s over %d agent kills (kill until all its partitions leased again)\n",
			rep.LongestFailover.Round(time.Millisecond), len(rep.Failovers))
	}
}

func parenList(items []string) string {
	if len(items) == 0 {
		return ""
	}
	return " (" + strings.Join(items, ", ") + ")"
}
