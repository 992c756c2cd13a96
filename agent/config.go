package agent

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// Config configures an Agent.
type Config struct {
	// Name identifies the agent in the registry, in leases and in results.
	// Default: "<hostname>-<pid>". Must be a subject token ([A-Za-z0-9_-]).
	Name string

	// Queue is the NATS contract (prefix, partitions, TTLs). Zero fields take
	// queue's defaults. Queue.Queue names the queue the single pool (Pool)
	// serves: default "default".
	Queue queue.Config

	// Pool configures the local worker pool. Pool.Worker.Command is required
	// unless Queues is set.
	Pool pool.Config

	// Queues, when set, replaces Queue.Queue, Queue.Limits, Pool and
	// Capacity: one pool per queue, all in this agent (one registry entry,
	// one NATS connection). Queue names must differ.
	Queues []QueueConfig

	// JobTimeout applies to jobs whose envelope carries no timeout_ms.
	// Default 30s.
	JobTimeout time.Duration

	// MaxJobTimeout is the ceiling of one attempt: a job whose timeout_ms
	// asks for more runs with MaxJobTimeout instead (and times out there).
	// Default 1h; JobTimeout may not exceed it.
	MaxJobTimeout time.Duration

	// PoisonDeaths is the poison guard's bound: a job during whose attempts
	// this many workers died (crashed, broke the protocol, or were killed
	// at the timeout) ends as "poison" in the dead-letter stream, whatever
	// its max_attempts. Deaths are counted in the poison KV bucket, so the
	// count survives redelivery to another agent. Default 2.
	PoisonDeaths int

	// CancelGrace is how long a worker running a canceled job may take to
	// answer before it is killed and replaced, as at a timeout. Default 2s.
	CancelGrace time.Duration

	// Capacity is how many jobs the agent holds at once (running plus
	// waiting for a worker). Held jobs count as delivered in JetStream, so
	// this is what "pull only what you can run soon" means. Default 0:
	// adaptive, what the pool starts within 25ms at the jobs' average run
	// time, pool × (1 + 25ms/avg), between twice the pool size (always,
	// for jobs of 25ms or longer, and for the first 8 jobs) and
	// max(2 × pool size, DefaultCapacityCeiling). After setDefaults it
	// holds that ceiling.
	Capacity int
	// adaptiveCapacity is set by setDefaults when Capacity was 0.
	adaptiveCapacity bool

	// FetchWait is how long one pull request waits for messages. Default 1s.
	FetchWait time.Duration

	// RebalanceInterval is how often the agent reconciles its partitions
	// with its view of the registry, which a KV watch keeps current (a
	// join or a departure seen there rebalances at once). A round with
	// nothing to take sends nothing. Default 1s.
	RebalanceInterval time.Duration

	// HeartbeatInterval is how often the agent refreshes its registry entry.
	// Default: a third of Queue.AgentTTL.
	HeartbeatInterval time.Duration

	// LeaseRenewInterval is how often held leases are renewed. Default: a
	// third of Queue.LeaseTTL.
	LeaseRenewInterval time.Duration

	// ProgressInterval is how often held jobs are marked InProgress.
	// Default: a third of Queue.AckWait.
	ProgressInterval time.Duration

	// RetryBackoffMin and RetryBackoffMax bound the NakWithDelay delay,
	// which doubles with each delivery. Defaults 200ms and 10s.
	RetryBackoffMin time.Duration
	RetryBackoffMax time.Duration

	// WorkerEnvAllow lists the variables of the agent's own environment
	// that workers inherit (a trailing * matches a prefix). Default
	// DefaultWorkerEnvAllow; an empty non-nil list passes nothing. Ignored
	// when Pool.Worker.Env is set.
	WorkerEnvAllow []string

	// WorkerEnv adds KEY=VALUE entries to every worker's environment; they
	// win over inherited ones. OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
	// MKL_NUM_THREADS default to 1 unless set here or inherited.
	WorkerEnv []string

	// Logger receives the agent's logs. Default: no logging.
	Logger *zap.Logger

	// Registerer, when set, receives the agent's Prometheus metrics
	// (procfleet_*). Default: none (metrics are kept but not exported).
	Registerer prometheus.Registerer

	// derived records which intervals follow from the queue's TTLs, so they
	// can follow the server's values once the topology is opened.
	// partitions: Queue.Partitions was 0, so the stream's count is adopted.
	derived struct{ heartbeat, renew, progress, partitions bool }
}

func (c *Config) deriveIntervals() {
	if c.derived.heartbeat {
		c.HeartbeatInterval = c.Queue.AgentTTL / 3
	}
	if c.derived.renew {
		c.LeaseRenewInterval = c.Queue.LeaseTTL / 3
	}
	if c.derived.progress {
		c.ProgressInterval = c.Queue.AckWait / 3
	}
}

// QueueConfig is one queue an agent serves, with its own pool.
type QueueConfig struct {
	// Name is the queue. Default "default".
	Name string
	// Limits are the queue's jobs stream limits, applied when this agent
	// creates the stream (or updates it, where its permissions allow).
	Limits queue.QueueLimits
	// Pool is the queue's worker pool. Pool.Worker.Command is required.
	Pool pool.Config
	// Capacity is how many of this queue's jobs the agent holds at once.
	// Default 0: adaptive, as Config.Capacity, per queue.
	Capacity int
}

// Validate reports what New would refuse in c, without a connection: a
// program can check its configuration before it connects.
func (c Config) Validate() error {
	if c.Name == "" {
		c.Name = "validate"
	}
	_, err := c.laneConfigs()
	return err
}

// laneConfigs returns one defaulted configuration per queue: c with Queue,
// Pool and Capacity set to that queue's.
func (c Config) laneConfigs() ([]Config, error) {
	qs := c.Queues
	if len(qs) == 0 {
		qs = []QueueConfig{{Name: c.Queue.Queue, Limits: c.Queue.Limits, Pool: c.Pool, Capacity: c.Capacity}}
	}
	seen := map[string]bool{}
	var out []Config
	var errs []error
	for i, q := range qs {
		lc := c
		lc.Queues = nil
		lc.Queue = c.Queue.ForQueue(q.Name)
		lc.Queue.Limits = q.Limits
		lc.Pool, lc.Capacity = q.Pool, q.Capacity
		name := lc.Queue.QueueName()
		if err := queue.ValidateQueueName(q.Name); err != nil {
			errs = append(errs, fmt.Errorf("%w: Queues[%d]: %w", ErrInvalidConfig, i, err))
			continue
		}
		if seen[name] {
			errs = append(errs, fmt.Errorf("%w: Queues[%d]: queue %q is listed twice", ErrInvalidConfig, i, name))
			continue
		}
		seen[name] = true
		if len(qs) > 1 && lc.Pool.Name == "" && lc.Name != "" {
			// Worker ids stay unique across the agent's pools.
			lc.Pool.Name = lc.Name + "-" + name
		}
		lc.setDefaults()
		if err := lc.validate(); err != nil {
			if len(qs) > 1 {
				err = fmt.Errorf("queue %s: %w", name, err)
			}
			errs = append(errs, err)
			continue
		}
		out = append(out, lc)
	}
	return out, errors.Join(errs...)
}

// DefaultJobTimeout is Config.JobTimeout's default, which the agent
// program's --job-timeout shows too.
const DefaultJobTimeout = 30 * time.Second

// ErrInvalidConfig is wrapped by every error New returns for a bad Config;
// each names the field.
var ErrInvalidConfig = errors.New("agent: invalid config")

func (c *Config) setDefaults() {
	if c.Name == "" {
		h, _ := os.Hostname()
		c.Name = sanitizeToken(fmt.Sprintf("%s-%d", h, os.Getpid()))
	}
	c.derived.partitions = c.Queue.Partitions == 0
	c.Queue = c.Queue.WithDefaults()
	if c.JobTimeout == 0 {
		c.JobTimeout = DefaultJobTimeout
	}
	if c.MaxJobTimeout == 0 {
		c.MaxJobTimeout = DefaultMaxJobTimeout
	}
	if c.PoisonDeaths == 0 {
		c.PoisonDeaths = DefaultPoisonDeaths
	}
	if c.CancelGrace == 0 {
		c.CancelGrace = DefaultCancelGrace
	}
	if c.Pool.Size == 0 {
		c.Pool.Size = pool.DefaultSize
	}
	if c.Pool.Name == "" {
		c.Pool.Name = c.Name
	}
	if c.Capacity == 0 {
		c.adaptiveCapacity = true
		_, c.Capacity = capacityBounds(c.Pool.Size)
	}
	if c.FetchWait == 0 {
		c.FetchWait = time.Second
	}
	if c.RebalanceInterval == 0 {
		c.RebalanceInterval = time.Second
	}
	c.derived.heartbeat = c.HeartbeatInterval == 0
	c.derived.renew = c.LeaseRenewInterval == 0
	c.derived.progress = c.ProgressInterval == 0
	c.deriveIntervals()
	if c.RetryBackoffMin == 0 {
		c.RetryBackoffMin = 200 * time.Millisecond
	}
	if c.RetryBackoffMax == 0 {
		c.RetryBackoffMax = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	c.Pool.Worker.Env = c.workerEnv()
	if c.Pool.Logger == nil {
		c.Pool.Logger = c.Logger
	}
}

func (c *Config) validate() error {
	var errs []error
	if !queue.ValidToken(c.Name) {
		errs = append(errs, fmt.Errorf("%w: Name %q must be 1-128 characters of [A-Za-z0-9_-]", ErrInvalidConfig, c.Name))
	}
	if len(c.Pool.Worker.Command) == 0 {
		errs = append(errs, fmt.Errorf("%w: Pool.Worker.Command is required", ErrInvalidConfig))
	}
	if c.Capacity < 1 {
		errs = append(errs, fmt.Errorf("%w: Capacity must be at least 1", ErrInvalidConfig))
	}
	if c.JobTimeout < 0 {
		errs = append(errs, fmt.Errorf("%w: JobTimeout cannot be negative", ErrInvalidConfig))
	}
	if c.MaxJobTimeout < 0 {
		errs = append(errs, errors.New("agent: MaxJobTimeout cannot be negative"))
	} else if c.JobTimeout > c.MaxJobTimeout {
		errs = append(errs, fmt.Errorf("agent: JobTimeout %v cannot exceed MaxJobTimeout %v", c.JobTimeout, c.MaxJobTimeout))
	}
	if c.CancelGrace < 0 {
		errs = append(errs, fmt.Errorf("%w: CancelGrace cannot be negative", ErrInvalidConfig))
	}
	if c.PoisonDeaths < 0 {
		errs = append(errs, errors.New("agent: PoisonDeaths cannot be negative"))
	}
	if c.RetryBackoffMax < c.RetryBackoffMin {
		errs = append(errs, fmt.Errorf("%w: RetryBackoffMax cannot be less than RetryBackoffMin", ErrInvalidConfig))
	}
	if err := c.Queue.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Defaults of Config fields.
const (
	DefaultMaxJobTimeout = time.Hour
	DefaultPoisonDeaths  = 2
)

// attemptTimeout is the timeout of one attempt of a job asking for
// timeoutMS: the job's own, else JobTimeout, never above MaxJobTimeout.
func (c *Config) attemptTimeout(timeoutMS int64) time.Duration {
	d := c.JobTimeout
	if timeoutMS > 0 {
		if timeoutMS >= c.MaxJobTimeout.Milliseconds() {
			return c.MaxJobTimeout
		}
		d = time.Duration(timeoutMS) * time.Millisecond
	}
	return min(d, c.MaxJobTimeout)
}

// sanitizeToken maps s onto the subject-token alphabet.
func sanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}
