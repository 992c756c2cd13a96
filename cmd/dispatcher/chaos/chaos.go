// Package chaos is `dispatcher chaos`: load on in-process agents while
// random workers are SIGKILLed and whole agents crash and come back, then a
// reconciliation of every accepted job against the results stream, the
// workers' execution log and the faults injected. Nothing may be lost;
// everything else (re-runs, affinity breaks, failover times) is counted and
// traced to its cause.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// ErrJobsLost is returned by Run when a job the stream accepted never
// got a result. It is the one outcome the fleet must never produce.
var ErrJobsLost = errors.New("chaos: accepted jobs have no result")

// ErrInvalidConfig is wrapped by every error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("chaos: invalid config")

// Defaults of Config, which the command's flags show too.
const (
	DefaultDuration        = time.Minute
	DefaultAgents          = 3
	DefaultWorkers         = 2
	DefaultSessions        = 40
	DefaultRate            = 100
	DefaultAnonymousShare  = 0.2
	DefaultFaultInterval   = time.Second
	DefaultAgentFaultShare = 0.25
	DefaultCommand         = "echo"
	DefaultDrainTimeout    = 3 * time.Minute
)

// Config configures Run. Every zero field takes its default.
type Config struct {
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
	// ExecLog is a file the workers append one line to per call they
	// start (package execlog; the Go test worker writes it). When set,
	// "executed more than once" counts real executions; when empty it counts jobs delivered more than once (result attempt >
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

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Agents == 0 {
		c.Agents = DefaultAgents
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.AnonymousShare == 0 {
		c.AnonymousShare = DefaultAnonymousShare
	}
	c.AnonymousShare = max(c.AnonymousShare, 0)
	if c.FaultInterval == 0 {
		c.FaultInterval = DefaultFaultInterval
	}
	if c.AgentFaultShare == 0 {
		c.AgentFaultShare = DefaultAgentFaultShare
	}
	c.AgentFaultShare = max(c.AgentFaultShare, 0)
	if c.Command == "" {
		c.Command = DefaultCommand
	}
	if c.Payload == nil {
		c.Payload = json.RawMessage(`{}`)
	}
	c.Queue = c.Queue.WithDefaults()
	if c.MaxDownTime == 0 {
		c.MaxDownTime = 2 * c.Queue.AgentTTL
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.Seed == 0 {
		c.Seed = rand.Uint64()
	}
	c.Out, c.Progress, c.Logger = localfleet.OutputDefaults(c.Out, c.Progress, io.Discard, c.Logger)
}

// validate names every invalid field; call it after setDefaults.
func (c *Config) validate() error {
	var errs []error
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("%w: Duration cannot be negative", ErrInvalidConfig))
	}
	if c.Agents < 1 {
		errs = append(errs, fmt.Errorf("%w: Agents must be at least 1", ErrInvalidConfig))
	}
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("%w: Workers must be at least 1", ErrInvalidConfig))
	}
	if c.Sessions < 1 {
		errs = append(errs, fmt.Errorf("%w: Sessions must be at least 1", ErrInvalidConfig))
	}
	if c.Rate < 1 {
		errs = append(errs, fmt.Errorf("%w: Rate must be at least 1", ErrInvalidConfig))
	}
	if c.AnonymousShare > 1 || c.AgentFaultShare > 1 {
		errs = append(errs, fmt.Errorf("%w: AnonymousShare and AgentFaultShare must be at most 1", ErrInvalidConfig))
	}
	if c.FaultInterval < 0 || c.MaxDownTime < 0 || c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: FaultInterval, MaxDownTime and DrainTimeout cannot be negative", ErrInvalidConfig))
	}
	if len(c.WorkerCmd) == 0 {
		errs = append(errs, fmt.Errorf("%w: WorkerCmd is required", ErrInvalidConfig))
	}
	if !json.Valid(c.Payload) {
		errs = append(errs, fmt.Errorf("%w: Payload is not valid JSON", ErrInvalidConfig))
	}
	if err := c.Queue.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Report is what a chaos run found. Every accepted job is reconciled
// against the results stream, the workers' execution log (when there is
// one) and the faults injected.
type Report struct {
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

// Run starts an embedded NATS server with JetStream in a temporary
// directory and cfg.Agents in-process agents, submits load for
// cfg.Duration while killing random workers (SIGKILL) and agents (crash:
// the NATS connection is cut before anything is cleaned up) and restarting
// them, then waits for every accepted job and reconciles. It prints the
// report to cfg.Out and returns it; the error wraps ErrJobsLost when an
// accepted job has no result.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	f, err := localfleet.Start(ctx, localfleet.Config{
		TempPattern: "procfleet-chaos-", Name: "procfleet-chaos", Queue: cfg.Queue, Logger: cfg.Logger,
	})
	if err != nil {
		return nil, err
	}
	defer f.Stop(context.WithoutCancel(ctx))
	client := f.Client
	r := &chaosRun{
		cfg: cfg, fleet: f, client: client, topo: client.Topology(),
		killedPIDs: map[int]string{},
		leaseOwner: map[int]leaseState{},
		jobs:       map[string]*chaosJob{},
		start:      time.Now(),
	}
	return r.run(ctx)
}
