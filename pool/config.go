package pool

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker"
)

// Config configures a Pool. The zero value of every field except Worker.Command
// selects its default.
type Config struct {
	// Worker is the template for every worker. Its ID is overwritten per
	// worker with "<Name>-<n>", n counting every worker the pool starts. A nil
	// Worker.Logger becomes the pool's logger. Worker.Command is required.
	Worker worker.Config
	// Name names the pool in worker ids and logs. Default "pool".
	Name string
	// Size is the number of workers. Default 4; negative is an error.
	Size int
	// StartConcurrency bounds how many workers start at once. Default 4;
	// negative is an error.
	StartConcurrency int
	// Lazy false (the default): Start starts every worker and waits until
	// all are ready. true: Start returns at once and a worker starts when a
	// checkout finds none free; once started, a worker is replaced eagerly.
	Lazy bool
	// MaxJobs retires a worker softly after this many calls. 0 (default)
	// means unlimited; negative is an error.
	MaxJobs int
	// TTL retires a worker softly once it is this old. 0 (default) means
	// unlimited; negative is an error.
	TTL time.Duration
	// IdleTTL retires a worker softly once it has been idle this long,
	// counted while it holds no session (a worker holding one is not
	// idle). 0 (default) means unlimited; negative is an error.
	IdleTTL time.Duration
	// MaxRSS retires a worker at once (a hard limit: its sessions are lost)
	// when its resident set exceeds this many bytes, checked at checkin and
	// by the health loop. 0 (default) means unlimited; negative is an error.
	MaxRSS int64
	// SessionIdleTTL expires a session idle this long: its worker is sent
	// session_end and the binding is dropped. Default 30m; negative means
	// sessions never expire (only EndSession ends them).
	SessionIdleTTL time.Duration
	// MaxSessions bounds the live sessions; a checkout for a new session
	// beyond it fails with ErrTooManySessions. Default 100000; negative is an
	// error.
	MaxSessions int
	// MaxWaiters bounds queued checkouts; a Reserve while this many wait
	// fails with ErrPoolSaturated. Default 10000; negative is an error.
	MaxWaiters int
	// HealthInterval is how long a worker may sit idle before it is pinged.
	// Default 10s; negative disables health checks.
	HealthInterval time.Duration
	// HealthTimeout bounds one ping. Default 5s; negative is an error.
	HealthTimeout time.Duration
	// HealthFailures is how many consecutive failed pings remove a worker.
	// Default 1; negative is an error. A failed ping kills the worker (worker
	// contract), so a dead worker is removed whatever this says.
	HealthFailures int
	// BackoffMin is the first restart delay after a failed start; it doubles
	// per consecutive failure, with jitter, up to BackoffMax, and resets on a
	// successful start. Default 100ms; negative is an error.
	BackoffMin time.Duration
	// BackoffMax caps the restart delay. Default 30s; less than BackoffMin is
	// an error.
	BackoffMax time.Duration
	// DegradedAfter is how many consecutive failed starts make
	// Stats().Degraded true. Default 3; negative is an error.
	DegradedAfter int
	// Logger receives the pool's events, named "pool". Default zap.NewNop().
	Logger *zap.Logger
}

// Defaults of Config; DefaultSize and DefaultSessionIdleTTL are exported
// because the agent program's flags show them.
const (
	defaultName           = "pool"
	DefaultSize           = 4
	defaultStartConc      = 4
	DefaultSessionIdleTTL = 30 * time.Minute
	defaultMaxSessions    = 100000
	defaultMaxWaiters     = 10000
	defaultHealthInterval = 10 * time.Second
	defaultHealthTimeout  = 5 * time.Second
	defaultHealthFailures = 1
	defaultBackoffMin     = 100 * time.Millisecond
	defaultBackoffMax     = 30 * time.Second
	defaultDegradedAfter  = 3
)

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Name == "" {
		c.Name = defaultName
	}
	if c.Size == 0 {
		c.Size = DefaultSize
	}
	if c.StartConcurrency == 0 {
		c.StartConcurrency = defaultStartConc
	}
	if c.SessionIdleTTL == 0 {
		c.SessionIdleTTL = DefaultSessionIdleTTL
	}
	if c.MaxSessions == 0 {
		c.MaxSessions = defaultMaxSessions
	}
	if c.MaxWaiters == 0 {
		c.MaxWaiters = defaultMaxWaiters
	}
	if c.HealthInterval == 0 {
		c.HealthInterval = defaultHealthInterval
	}
	if c.HealthTimeout == 0 {
		c.HealthTimeout = defaultHealthTimeout
	}
	if c.HealthFailures == 0 {
		c.HealthFailures = defaultHealthFailures
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = defaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = defaultBackoffMax
	}
	if c.DegradedAfter == 0 {
		c.DegradedAfter = defaultDegradedAfter
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	bad := func(msg string) error { return fmt.Errorf("%w: %s", ErrInvalidConfig, msg) }
	switch {
	case len(c.Worker.Command) == 0 || c.Worker.Command[0] == "":
		return bad("Worker.Command is required")
	case c.Size < 0:
		return bad("Size cannot be less than 1")
	case c.StartConcurrency < 0:
		return bad("StartConcurrency cannot be less than 1")
	case c.MaxJobs < 0:
		return bad("MaxJobs cannot be negative")
	case c.TTL < 0:
		return bad("TTL cannot be negative")
	case c.IdleTTL < 0:
		return bad("IdleTTL cannot be negative")
	case c.MaxRSS < 0:
		return bad("MaxRSS cannot be negative")
	case c.MaxSessions < 0:
		return bad("MaxSessions cannot be negative")
	case c.MaxWaiters < 0:
		return bad("MaxWaiters cannot be negative")
	case c.HealthTimeout < 0:
		return bad("HealthTimeout cannot be negative")
	case c.HealthFailures < 0:
		return bad("HealthFailures cannot be negative")
	case c.BackoffMin < 0:
		return bad("BackoffMin cannot be negative")
	case c.BackoffMax < c.BackoffMin:
		return bad("BackoffMax cannot be less than BackoffMin")
	case c.DegradedAfter < 0:
		return bad("DegradedAfter cannot be negative")
	}
	return nil
}
