package queue

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

var (
	// ErrInvalidConfig is wrapped by Config.Validate's errors, which name
	// the field.
	ErrInvalidConfig = errors.New("queue: invalid config")

	// ErrNoTopology means the streams or buckets do not exist yet.
	ErrNoTopology = errors.New("queue: topology not found (is the dispatcher running `serve`, or call queue.Ensure)")

	// ErrBadRequest matches every *BadRequestError.
	ErrBadRequest = errors.New("queue: bad request")

	// ErrResultNotFound means no result is stored for the job id (yet, or
	// any more after ResultsMaxAge).
	ErrResultNotFound = errors.New("queue: result not found")

	// ErrDeadLetterNotFound means no dead letter has that DLQ sequence.
	ErrDeadLetterNotFound = errors.New("queue: dead letter not found")

	// ErrNotReplayable means a dead letter holds no job to replay: its body
	// was left out because the letter would not fit the server's max
	// payload.
	ErrNotReplayable = errors.New("queue: dead letter not replayable")

	// ErrLeaseHeld means another owner holds the partition lease. The
	// returned error is a *LeaseHeldError naming the owner.
	ErrLeaseHeld = errors.New("queue: lease held by another agent")

	// ErrLeaseLost means the lease expired or was taken over: its revision
	// is no longer the latest. The partition must be given up at once.
	ErrLeaseLost = errors.New("queue: lease lost")
)

// MismatchError reports an existing resource whose contract field differs
// from the configuration. Ensure never changes such a field by itself:
// partition count, retention and subjects decide where jobs go, and changing
// them under running agents would strand jobs.
type MismatchError struct {
	Resource string // e.g. "stream FLEET_JOBS", "consumer FLEET_JOBS/p-3"
	Field    string // e.g. "Partitions", "Retention", "Subjects"
	Want     any
	Have     any
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("queue: %s exists with %s %v, configuration wants %v (delete it or fix the configuration)",
		e.Resource, e.Field, e.Have, e.Want)
}

// BadRequestError is a job that can never run: it is not valid JSON, lacks a
// command, has a bad id or session, or an out-of-range field. Retrying
// cannot help; agents store a bad_request result and dead-letter it.
type BadRequestError struct {
	JobID   string // the id the outcome is filed under (OutcomeID); from ParseJob always a valid token
	Session string // the session token from the subject, as found
	Reason  string
}

func (e *BadRequestError) Error() string {
	msg := "queue: bad request"
	if e.JobID != "" {
		msg += " (job " + e.JobID + ")"
	}
	return msg + ": " + e.Reason
}

// Is makes errors.Is(err, ErrBadRequest) true.
func (e *BadRequestError) Is(target error) bool { return target == ErrBadRequest }

// LeaseHeldError is returned by AcquireLease when another owner holds the
// lease.
type LeaseHeldError struct {
	Partition int
	Owner     string
}

func (e *LeaseHeldError) Error() string {
	return fmt.Sprintf("queue: lease of partition %d held by %q", e.Partition, e.Owner)
}

// Unwrap makes errors.Is(err, ErrLeaseHeld) true.
func (e *LeaseHeldError) Unwrap() error { return ErrLeaseHeld }

// ErrTooLarge matches every *TooLargeError.
var ErrTooLarge = errors.New("queue: message too large")

// ErrQueueFull is wrapped by a submit the queue's jobs stream refused
// because it holds as many jobs (or bytes) as its limits allow: the
// stream discards new jobs, never waiting ones. Retry once agents have
// taken some, or raise the limits (dispatcher queue add).
var ErrQueueFull = errors.New("queue: queue is full")

// queueFull returns err as an ErrQueueFull naming t's queue and its limits
// when it is the jobs stream's refusal of a message over them.
func (t *Topology) queueFull(err error) error {
	var jsErr jetstream.JetStreamError
	if !errors.As(err, &jsErr) || jsErr.APIError() == nil {
		return err
	}
	d := jsErr.APIError().Description
	if !strings.Contains(d, "maximum messages exceeded") && !strings.Contains(d, "maximum bytes exceeded") {
		return err
	}
	var limits []string
	c := t.Jobs.CachedInfo().Config
	if c.MaxMsgs > 0 {
		limits = append(limits, fmt.Sprintf("%d jobs", c.MaxMsgs))
	}
	if c.MaxBytes > 0 {
		limits = append(limits, fmt.Sprintf("%d bytes", c.MaxBytes))
	}
	return fmt.Errorf("%w: queue %s holds at most %s; retry once agents have taken some, or raise its limits (dispatcher queue add %s --max-msgs N --max-bytes SIZE)",
		ErrQueueFull, t.Config.QueueName(), strings.Join(limits, " or "), t.Config.QueueName())
}

// TooLargeError is a message the server would refuse: its size, headers
// included, is over the server's max payload or its stream's max message
// size.
type TooLargeError struct {
	What  string // "result of job x", "dead letter of job x"
	Size  int    // bytes, headers included
	Limit int    // bytes; 0 if not known
	Of    string // whose limit: "the server's max payload", "stream X's max message size"
}

func (e *TooLargeError) Error() string {
	return "queue: " + e.What + " is " + e.Sizes()
}

// Sizes says "<size> bytes, over <whose limit> of <limit> bytes".
func (e *TooLargeError) Sizes() string {
	if e.Limit <= 0 {
		return fmt.Sprintf("%d bytes, over %s", e.Size, e.Of)
	}
	return fmt.Sprintf("%d bytes, over %s of %d bytes", e.Size, e.Of, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }
