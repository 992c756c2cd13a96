package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

type chaosRun struct {
	cfg    Config
	fleet  *localfleet.Fleet
	client *dispatcher.Client
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
	m        *localfleet.Member // nil while down
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

func (r *chaosRun) run(ctx context.Context) (*Report, error) {
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
		return nil, fmt.Errorf("chaos: watch leases: %w", err)
	}

	r.agents = make([]*chaosAgent, cfg.Agents)
	for i := range r.agents {
		r.agents[i] = &chaosAgent{slot: i + 1, name: fmt.Sprintf("agent-%d", i+1)}
		if err := r.startAgent(ctx, r.agents[i]); err != nil {
			_ = stopWatching()
			return nil, err
		}
	}
	bctx, stopWait := context.WithTimeout(ctx, localfleet.DefaultBalanceTimeout)
	err := localfleet.WaitBalanced(bctx, r.liveAgents(), cfg.Queue.Partitions)
	stopWait()
	if err != nil {
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
		return nil, fmt.Errorf("chaos: watch leases: %w", err)
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
	// Stamped before Start: the agent may take leases before Start returns.
	at := time.Now()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	m, err := r.fleet.StartAgent(sctx, r.agentConfig(ca.name))
	if err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	ca.m, ca.a, ca.nc = m, m.Agent, m.Conn
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
