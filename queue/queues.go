package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Queues. A queue is a named kind of work: its own jobs stream, partitions,
// consumers, leases and sessions. Results, dead letters and progress are
// shared by every queue and name the queue in a field.
//
//	queue     publish subjects                              jobs stream
//	default   <prefix>.job.s.<session>, <prefix>.job.any    FLEET_JOBS
//	<q>       <prefix>.job.<q>.s.<session>, <prefix>.job.<q>.any
//	                                                         FLEET_JOBS_<q>
//
// Session jobs are stored as <prefix>.job[.<q>].p.<n>.<session>; every queue
// has the durable consumers p-0..p-<P-1> and any on its own stream, and its
// leases are the keys "<q>.p-<n>" of the leases bucket (the default queue
// keeps "p-<n>").

// DefaultQueue is the queue of jobs published on the subjects of fleets
// without queues.
const DefaultQueue = "default"

// NameOrDefault names the queue of a queue field ("" is the default
// queue's: envelopes, registry entries and configs leave it out).
func NameOrDefault(q string) string {
	if q == "" {
		return DefaultQueue
	}
	return q
}

// MaxQueueName bounds a queue name, so that stream names and lease keys stay
// short.
const MaxQueueName = 64

// ReservedQueueNames cannot name a queue: they are tokens of the default
// queue's own subjects ("s", "p", "any"), or the default queue's name, which
// is only spelled the old way ("fleet.job.default.any" is not a subject of
// any stream).
var ReservedQueueNames = []string{"s", "p", "any", DefaultQueue}

// ErrUnknownQueue means a queue has no jobs stream: nobody declared it, no
// agent serving it has started, and no submission through the dispatcher
// created it. A plain NATS publish to its subjects gets "no responders".
var ErrUnknownQueue = errors.New("queue: no such queue")

// ValidateQueueName reports why name cannot name a queue; "" and "default"
// are the default queue.
func ValidateQueueName(name string) error {
	if name == "" || name == DefaultQueue {
		return nil
	}
	if len(name) > MaxQueueName || !ValidToken(name) {
		return fmt.Errorf("queue name %q must be 1-%d characters of [A-Za-z0-9_-]", truncate(name), MaxQueueName)
	}
	if slices.Contains(ReservedQueueNames, name) {
		return fmt.Errorf("queue name %q is reserved (reserved: %s)", name, strings.Join(ReservedQueueNames, ", "))
	}
	return nil
}

// IsDefaultQueue reports whether c configures the default queue.
func (c Config) IsDefaultQueue() bool { return c.Queue == "" || c.Queue == DefaultQueue }

// QueueName is the configured queue's name, "default" for the default one.
func (c Config) QueueName() string {
	if c.IsDefaultQueue() {
		return DefaultQueue
	}
	return c.Queue
}

// ForQueue returns c for queue name (its own Limits are cleared: limits
// belong to one queue).
func (c Config) ForQueue(name string) Config {
	if name == DefaultQueue {
		name = ""
	}
	if name != c.Queue {
		c.Limits = QueueLimits{}
	}
	c.Queue = name
	return c
}

// QueueLimits are one queue's jobs stream limits.
type QueueLimits struct {
	// MaxMsgs and MaxBytes bound the jobs waiting in the queue. Default 0:
	// unlimited. Once full, publishes are refused (the stream discards
	// new messages, never waiting jobs).
	MaxMsgs  int64 `json:"max_msgs,omitempty" yaml:"max_msgs"`
	MaxBytes int64 `json:"max_bytes,omitempty" yaml:"max_bytes"`
	// Storage is "file" or "memory". Default: the fleet's (Config.Storage).
	// Fixed when the stream is created.
	Storage string `json:"storage,omitempty" yaml:"storage"`
	// Replicas of the queue's jobs stream. Default: the fleet's.
	Replicas int `json:"replicas,omitempty" yaml:"replicas"`
}

func (l QueueLimits) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: Limits: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case l.MaxMsgs < 0:
		return bad("MaxMsgs cannot be negative, got %d", l.MaxMsgs)
	case l.MaxBytes < 0:
		return bad("MaxBytes cannot be negative, got %d", l.MaxBytes)
	case l.Storage != "" && l.Storage != "file" && l.Storage != "memory":
		return bad("Storage must be \"file\" or \"memory\", got %q", l.Storage)
	case l.Replicas < 0 || l.Replicas > 5:
		return bad("Replicas must be between 0 (the fleet's) and 5, got %d", l.Replicas)
	}
	return nil
}

// jobsStorage and jobsReplicas are the configured queue's jobs stream's.
func (c Config) jobsStorage() jetstream.StorageType {
	switch c.Limits.Storage {
	case "file":
		return jetstream.FileStorage
	case "memory":
		return jetstream.MemoryStorage
	}
	return c.Storage
}

func (c Config) jobsReplicas() int {
	if c.Limits.Replicas > 0 {
		return c.Limits.Replicas
	}
	return c.Replicas
}

// ParseJobSubject classifies a job subject of any queue under c.Prefix,
// published or stored: it returns the queue ("default" for the old
// spelling) and the session ("" for an any subject).
func (c Config) ParseJobSubject(subject string) (queueName, session string, ok bool) {
	rest, found := strings.CutPrefix(subject, c.Prefix+".job.")
	if !found {
		return "", "", false
	}
	q := ""
	if rest != "any" && !strings.HasPrefix(rest, "s.") && !strings.HasPrefix(rest, "p.") {
		first, _, found := strings.Cut(rest, ".")
		if !found || ValidateQueueName(first) != nil || first == DefaultQueue {
			return "", "", false
		}
		q = first
	}
	qc := c.ForQueue(q)
	session, ok = qc.jobSubject(subject)
	if !ok {
		return "", "", false
	}
	return qc.QueueName(), session, true
}

// queueOfStream returns the queue whose jobs stream is named stream.
func (c Config) queueOfStream(stream string) (string, bool) {
	base := c.ForQueue("").JobsStream()
	if stream == base {
		return DefaultQueue, true
	}
	q, ok := strings.CutPrefix(stream, base+"_")
	if !ok || ValidateQueueName(q) != nil {
		return "", false
	}
	return q, true
}

// ListQueues returns the queues that have a jobs stream, sorted, "default"
// first when it exists.
func ListQueues(ctx context.Context, js jetstream.JetStream, cfg Config) ([]string, error) {
	cfg = cfg.WithDefaults()
	names := js.StreamNames(ctx)
	var out []string
	for n := range names.Name() {
		if q, ok := cfg.queueOfStream(n); ok {
			out = append(out, q)
		}
	}
	if err := names.Err(); err != nil {
		return nil, fmt.Errorf("queue: list queues: %w", err)
	}
	slices.SortFunc(out, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == DefaultQueue:
			return -1
		case b == DefaultQueue:
			return 1
		}
		return strings.Compare(a, b)
	})
	return out, nil
}

// EnsureQueue creates or verifies queue cfg.Queue's jobs stream and
// consumers (with cfg.Limits), and binds the shared streams and buckets,
// creating them if they are missing. For the default queue it is Ensure.
func EnsureQueue(ctx context.Context, js jetstream.JetStream, cfg Config) (*Topology, error) {
	return Ensure(ctx, js, cfg)
}

// OpenQueue binds queue cfg.Queue's topology without creating anything; a
// queue without a jobs stream is ErrNoTopology and ErrUnknownQueue.
func OpenQueue(ctx context.Context, js jetstream.JetStream, cfg Config) (*Topology, error) {
	t, err := Open(ctx, js, cfg)
	if err != nil && errors.Is(err, ErrNoTopology) && !cfg.IsDefaultQueue() {
		if _, serr := js.Stream(ctx, cfg.WithDefaults().JobsStream()); errors.Is(serr, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("%w %q: %w", ErrUnknownQueue, cfg.Queue, err)
		}
	}
	return t, err
}
