package queue

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Limits on the configuration that keep the topology sane.
const (
	// MaxPartitions bounds Config.Partitions: each partition is a durable
	// consumer and a lease, and agents renew every lease they hold.
	MaxPartitions = 1024
	// minKVTTL is the smallest bucket TTL the server honours for limit
	// markers (its TTL granularity is one second).
	minKVTTL = time.Second
)

// Config names the NATS resources of one fleet and tunes them. Every field's
// zero value means its default; WithDefaults fills them in.
type Config struct {
	// Prefix is the first token of every subject. Default "fleet". Streams
	// are upper(Prefix)+"_JOBS", "_RESULTS", "_DLQ" (FLEET_JOBS, ...); KV
	// buckets are Prefix+"_agents" and Prefix+"_leases". Must be a single
	// token of [A-Za-z0-9_-] so that it is valid in subjects, stream names
	// and bucket names alike.
	Prefix string

	// Partitions is how many partitions session jobs are hashed into.
	// Default 64. Fixed when the jobs stream is created: a later Ensure with
	// another value is a *MismatchError. Open with 0 adopts the stream's.
	Partitions int

	// Schedules lets the jobs streams hold delayed and periodic jobs (the
	// server's message schedules: fleet.delay.<id>, fleet.schedule.<name>).
	// Default off, because the server then also turns on roll-ups for those
	// streams: any client allowed to publish a job could send a
	// "Nats-Rollup: all" header and purge every waiting job. Turn it on
	// (`dispatcher serve --schedules`) only where every job publisher is
	// trusted. Ensure turns it on for an existing stream; the server cannot
	// turn it off again.
	Schedules bool

	// Replicas for every stream and bucket. Default 1.
	Replicas int

	// Storage for every stream and bucket. Default jetstream.FileStorage
	// (the zero value).
	Storage jetstream.StorageType

	// DedupWindow is the jobs stream's duplicate window: a resubmitted job
	// id within it is dropped. Default 2m.
	DedupWindow time.Duration

	// ResultsMaxAge is how long results are kept. Default 24h.
	ResultsMaxAge time.Duration

	// ResultsDedup is the results stream's duplicate window. Default 1h,
	// capped at ResultsMaxAge.
	ResultsDedup time.Duration

	// ResultsStorage is the results stream's storage: "file", "memory",
	// or "" for Storage. Memory-stored results cost the server less per
	// job (see README, Performance) but a server restart loses every stored
	// result, while the jobs they answer stay acked: a client that had not
	// read a result by then never will. Pair it with a short ResultsMaxAge
	// so that the stream's memory stays bounded. Fixed when the stream is
	// created (a later Ensure with another value is a *MismatchError).
	ResultsStorage string

	// AgentTTL is the agents bucket TTL: an agent that stops heartbeating
	// disappears after it. Default 3s (agents heartbeat every third of it);
	// minimum 1s. Survivors watch the bucket and, the moment a dead agent's
	// entry expires, take its partitions without waiting for its leases to
	// expire, so failover takes AgentTTL minus up to one heartbeat interval,
	// plus the server's expiry lag (measured in reliability.TestAgentCrash).
	// An agent whose own heartbeats stop getting through stops pulling from
	// its partitions before its entry can expire.
	AgentTTL time.Duration

	// LeaseTTL is the leases bucket TTL: a lease not renewed within it
	// expires and its partition moves on. Default 6s; minimum 1s. Limit
	// markers are kept so watchers see expiries. A dead agent's leases are
	// taken once its registry entry expires (see AgentTTL); LeaseTTL bounds
	// failover when that is not seen, e.g. an agent that heartbeats but no
	// longer renews.
	LeaseTTL time.Duration

	// AckWait is every job consumer's ack wait: a job held longer without
	// an ack or InProgress is redelivered. Default 10s: agents mark held jobs
	// InProgress every third of it, so this bounds how long the jobs of an
	// agent that died wait before another agent gets them.
	AckWait time.Duration

	// MaxDeliver caps deliveries per job on every job consumer. Default 25:
	// above MaxAttemptsLimit, so the server's max-deliveries advisory only
	// fires for jobs that never get a verdict (agents dying mid-job).
	// Values at or below a job's max_attempts make the server give up
	// first. -1 means unlimited (then a job without a verdict loops).
	MaxDeliver int

	// MaxAckPending bounds unacked jobs per consumer. Default 1000; -1
	// means unlimited.
	MaxAckPending int

	// MemoryConsumers keeps the job consumers' state (what each consumer
	// delivered, to whom, how often) in the server's memory instead of
	// state files. Default off. Under session load the 64 partition
	// consumers otherwise rewrite their state files up to 10 times a
	// second each, which costs the server about a quarter of its CPU per
	// session job (see README, Performance). The jobs themselves stay in
	// the jobs stream with its Storage, so a server restart loses none,
	// but it does lose the consumers: agents recreate a missing consumer
	// when they find it gone (their NATS user needs the right to create
	// consumers on the jobs stream; otherwise the dispatcher's Ensure,
	// e.g. `serve` starting, does), and the recreated consumer counts
	// deliveries from 1 again. So max_attempts and MaxDeliver bound the
	// attempts per server lifetime, not in all: each server restart may
	// grant a job up to max_attempts more. The poison guard (worker
	// deaths, kept in a KV bucket) still holds across restarts. Fixed when
	// the jobs stream is created, which records it (stream metadata
	// "procfleet_memory_consumers"): Ensure and Open adopt an existing
	// stream's choice, whatever this field says, so whoever recreates a
	// lost consumer makes it alike (check Topology.Config to see what an
	// Ensure got). A consumer stored otherwise than its stream says is a
	// *MismatchError.
	MemoryConsumers bool

	// CancelTTL is how long a cancel is kept in the cancels stream (its
	// max age): a job delivered within it after its cancel never runs.
	// Default 24h (or DedupWindow, if longer); at least DedupWindow. See
	// CancelStream.
	CancelTTL time.Duration

	// Queue names the queue this configuration's jobs stream, subjects,
	// consumers and leases belong to (see queues.go). "" and "default" are
	// the default queue, spelled the way fleets without queues spell it:
	// stream FLEET_JOBS, subjects "<prefix>.job.s.<session>" and
	// "<prefix>.job.any". Any other name is a token of [A-Za-z0-9_-], at
	// most MaxQueueName characters, not one of ReservedQueueNames.
	Queue string

	// Limits are the queue's jobs stream limits. Zero fields: unlimited,
	// the fleet's Storage and Replicas. They are the stream's when Ensure
	// creates it; an existing stream keeps its MaxMsgs and MaxBytes unless
	// DeclareLimits is set.
	Limits QueueLimits
	// DeclareLimits makes Ensure set Limits' MaxMsgs and MaxBytes on an
	// existing jobs stream too (dispatcher queue add). Without it an agent,
	// a dispatcher or a submit that opens the queue with no limits of its
	// own leaves the operator's in place.
	DeclareLimits bool
}

// Defaults of Config that the programs' flags show too.
const (
	DefaultPrefix     = "fleet"
	DefaultPartitions = 64
)

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = 2 * time.Minute
	}
	if c.ResultsMaxAge == 0 {
		c.ResultsMaxAge = 24 * time.Hour
	}
	if c.ResultsDedup == 0 {
		c.ResultsDedup = min(time.Hour, c.ResultsMaxAge)
	}
	if c.AgentTTL == 0 {
		c.AgentTTL = 3 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 6 * time.Second
	}
	if c.AckWait == 0 {
		c.AckWait = 10 * time.Second
	}
	if c.MaxDeliver == 0 {
		c.MaxDeliver = 25
	}
	if c.MaxAckPending == 0 {
		c.MaxAckPending = 1000
	}
	if c.CancelTTL == 0 {
		c.CancelTTL = max(DefaultCancelTTL, c.DedupWindow)
	}
	return c
}

// Validate reports the first invalid field. Call it on WithDefaults' result:
// zero values are invalid here.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case !ValidToken(c.Prefix):
		return bad("Prefix must be one token of [A-Za-z0-9_-], got %q", c.Prefix)
	case c.Partitions < 1 || c.Partitions > MaxPartitions:
		return bad("Partitions must be between 1 and %d, got %d", MaxPartitions, c.Partitions)
	case c.Replicas < 1 || c.Replicas > 5:
		return bad("Replicas must be between 1 and 5, got %d", c.Replicas)
	case c.Storage != jetstream.FileStorage && c.Storage != jetstream.MemoryStorage:
		return bad("Storage must be FileStorage or MemoryStorage, got %d", c.Storage)
	case c.DedupWindow <= 0:
		return bad("DedupWindow must be positive, got %s", c.DedupWindow)
	case c.ResultsMaxAge <= 0:
		return bad("ResultsMaxAge must be positive, got %s", c.ResultsMaxAge)
	case c.ResultsDedup <= 0 || c.ResultsDedup > c.ResultsMaxAge:
		return bad("ResultsDedup must be positive and at most ResultsMaxAge (%s), got %s", c.ResultsMaxAge, c.ResultsDedup)
	case c.AgentTTL < minKVTTL:
		return bad("AgentTTL must be at least %s, got %s", minKVTTL, c.AgentTTL)
	case c.LeaseTTL < minKVTTL:
		return bad("LeaseTTL must be at least %s, got %s", minKVTTL, c.LeaseTTL)
	case c.AckWait <= 0:
		return bad("AckWait must be positive, got %s", c.AckWait)
	case c.MaxDeliver < 1 && c.MaxDeliver != -1:
		return bad("MaxDeliver must be at least 1 (or -1 for unlimited), got %d", c.MaxDeliver)
	case c.MaxAckPending < 1 && c.MaxAckPending != -1:
		return bad("MaxAckPending must be at least 1 (or -1 for unlimited), got %d", c.MaxAckPending)
	case c.ResultsStorage != "" && c.ResultsStorage != "file" && c.ResultsStorage != "memory":
		return bad("ResultsStorage must be \"file\", \"memory\" or empty (Storage), got %q", c.ResultsStorage)
	case c.CancelTTL < c.DedupWindow:
		return bad("CancelTTL must be at least DedupWindow (%s), got %s", c.DedupWindow, c.CancelTTL)
	}
	if err := ValidateQueueName(c.Queue); err != nil {
		return fmt.Errorf("%w: Queue: %w", ErrInvalidConfig, err)
	}
	return c.Limits.validate()
}

// Resource names.

// JobsStream is the jobs stream's name of the configured queue:
// "FLEET_JOBS" for the default queue, "FLEET_JOBS_<queue>" for another.
func (c Config) JobsStream() string {
	if c.IsDefaultQueue() {
		return strings.ToUpper(c.Prefix) + "_JOBS"
	}
	return strings.ToUpper(c.Prefix) + "_JOBS_" + c.Queue
}

// ResultsStream is the results stream's name, e.g. "FLEET_RESULTS".
func (c Config) ResultsStream() string { return strings.ToUpper(c.Prefix) + "_RESULTS" }

// DLQStream is the dead-letter stream's name, e.g. "FLEET_DLQ".
func (c Config) DLQStream() string { return strings.ToUpper(c.Prefix) + "_DLQ" }

// AgentsBucket is the agent registry's KV bucket, e.g. "fleet_agents".
func (c Config) AgentsBucket() string { return c.Prefix + "_agents" }

// LeasesBucket is the partition leases' KV bucket, e.g. "fleet_leases".
func (c Config) LeasesBucket() string { return c.Prefix + "_leases" }

// PoisonBucket is the KV bucket of worker deaths per job, e.g.
// "fleet_poison": the agents' poison guard (see PoisonTTL).
func (c Config) PoisonBucket() string { return c.Prefix + "_poison" }

// PartitionConsumerName is the durable consumer of partition p, "p-<p>".
func PartitionConsumerName(p int) string { return "p-" + strconv.Itoa(p) }

// AnyConsumerName is the durable consumer of jobs without a session.
const AnyConsumerName = "any"

// Subjects.

// SessionSubject is where publishers send a job of session, e.g.
// "fleet.job.s.<session>" (default queue) or "fleet.job.<queue>.s.<session>".
// The jobs stream re-files it under its partition.
func (c Config) SessionSubject(session string) string { return c.jobPrefix() + "s." + session }

// AnySubject is where publishers send a job without a session,
// "fleet.job.any" (default queue) or "fleet.job.<queue>.any".
func (c Config) AnySubject() string { return c.jobPrefix() + "any" }

// PartitionFilter is the stored subject filter of partition p,
// "fleet.job.p.<p>.*" or "fleet.job.<queue>.p.<p>.*" (the last token is the
// session).
func (c Config) PartitionFilter(p int) string { return c.partitionPrefix(p) + "*" }

func (c Config) partitionPrefix(p int) string {
	return c.jobPrefix() + "p." + strconv.Itoa(p) + "."
}

// PartitionOfSubject returns the partition of a stored job subject,
// "fleet.job.p.<p>.<session>", and false for any other subject (an
// anonymous job's, or a session subject the stream stored untransformed),
// whose jobs the shared consumer takes.
func (c Config) PartitionOfSubject(stored string) (int, bool) {
	rest, ok := strings.CutPrefix(stored, c.jobPrefix()+"p.")
	if !ok {
		return 0, false
	}
	n, _, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, false
	}
	p, err := strconv.Atoi(n)
	return p, err == nil && p >= 0 && p < c.Partitions
}

// jobPrefix is what every job subject of the configured queue starts with:
// "fleet.job." or "fleet.job.<queue>.".
func (c Config) jobPrefix() string {
	if c.IsDefaultQueue() {
		return c.Prefix + ".job."
	}
	return c.Prefix + ".job." + c.Queue + "."
}

// ResultSubject is where the result of job id is stored,
// "fleet.result.<id>".
func (c Config) ResultSubject(id string) string { return c.Prefix + ".result." + id }

// DLQSubject is where the dead letter of job id is stored, "fleet.dlq.<id>".
func (c Config) DLQSubject(id string) string { return c.Prefix + ".dlq." + id }

// ProgressSubject is the core NATS subject for progress reports of job id,
// "fleet.progress.<id>".
func (c Config) ProgressSubject(id string) string { return c.Prefix + ".progress." + id }

// sessionWildcard is the stream subject (and transform source) of session
// jobs.
func (c Config) sessionWildcard() string { return c.jobPrefix() + "s.*" }

// partitionTransform files "<p>.job.s.<session>" under
// "<p>.job.p.<fnv32a(session) % P>.<session>". The server computes the
// partition; PartitionOf reproduces it.
func (c Config) partitionTransform() string {
	return fmt.Sprintf("%sp.{{partition(%d,1)}}.{{wildcard(1)}}", c.jobPrefix(), c.Partitions)
}

// jobSubject classifies a stored or published job subject. It returns the
// session ("" for the any subject) and whether the subject belongs to the
// jobs stream at all. A partition subject's session is returned even when it
// is not a valid token; callers validate.
func (c Config) jobSubject(subject string) (session string, ok bool) {
	if subject == c.AnySubject() {
		return "", true
	}
	rest, found := strings.CutPrefix(subject, c.jobPrefix())
	if !found {
		return "", false
	}
	if s, found := strings.CutPrefix(rest, "s."); found {
		return s, s != "" && !strings.Contains(s, ".")
	}
	if r, found := strings.CutPrefix(rest, "p."); found {
		n, s, found := strings.Cut(r, ".")
		if !found || s == "" || strings.Contains(s, ".") {
			return "", false
		}
		if _, err := strconv.Atoi(n); err != nil {
			return "", false
		}
		return s, true
	}
	return "", false
}

// publishSubject maps a stored job subject back to the subject it was
// published on, so that republishing re-partitions it.
// Any queue's subject is mapped, not only the configured queue's.
func (c Config) publishSubject(stored string) (string, bool) {
	q, session, ok := c.ParseJobSubject(stored)
	if !ok {
		return "", false
	}
	qc := c.ForQueue(q)
	if session == "" {
		return qc.AnySubject(), true
	}
	return qc.SessionSubject(session), true
}

// ValidToken reports whether s can be a session or job id: 1 to 128
// characters of [A-Za-z0-9_-].
func ValidToken(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
}
