package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// ErrNoServer is returned (wrapped) by waits that give up while no live
// agent serves the job's queue: the job waits in its queue until one does
// (or, under `dispatcher serve --unroutable-after`, is dead-lettered as
// unroutable).
var ErrNoServer = errors.New("dispatcher: no agent serves the queue")

// queues caches the topologies of the queues a client has used. The
// client's own topology is the default queue's (or the one its Config
// names).
type queues struct {
	mu     sync.Mutex
	topos  map[string]*queue.Topology
	create bool // the client may create a queue it submits to (serve's client)
	// max bounds the queues a submit may create: each is a stream with
	// its partitions' consumers on the server (0: DefaultMaxQueues).
	max int
	// createMu makes the count and the creation of a queue one step.
	createMu sync.Mutex
}

// DefaultMaxQueues is how many queues there may be before a submit to a
// new one is refused (ServeConfig.MaxQueues).
const DefaultMaxQueues = 32

// ErrTooManyQueues is wrapped by a submit that would create a queue beyond
// the limit: declare it (dispatcher queue add), which the limit does not
// bound.
var ErrTooManyQueues = errors.New("dispatcher: too many queues")

// Queue returns the topology of queue name ("" or "default": the default
// queue), opening it on first use. A queue without a jobs stream is an error
// wrapping queue.ErrUnknownQueue, unless the client was made by
// EnsureClient (as `dispatcher serve` is), which creates it.
func (c *Client) Queue(ctx context.Context, name string) (*queue.Topology, error) {
	return c.queue(ctx, name, c.queues.create)
}

// knownQueue is Queue that never creates a queue: for reads, which must not
// make one (a missing queue wraps queue.ErrUnknownQueue).
func (c *Client) knownQueue(ctx context.Context, name string) (*queue.Topology, error) {
	return c.queue(ctx, name, false)
}

func (c *Client) queue(ctx context.Context, name string, create bool) (*queue.Topology, error) {
	if err := queue.ValidateQueueName(name); err != nil {
		return nil, &queue.BadRequestError{Reason: err.Error()}
	}
	cfg := c.topo.Config.ForQueue(name)
	if cfg.QueueName() == c.topo.Config.QueueName() {
		return c.topo, nil
	}
	c.queues.mu.Lock()
	t, ok := c.queues.topos[cfg.QueueName()]
	c.queues.mu.Unlock()
	if ok {
		return t, nil
	}
	// An existing queue is opened with its own partition count (agents
	// may have created it with another than the default queue's); a
	// missing one is created, where the client may, with the fleet's.
	open := cfg
	open.Partitions = 0
	t, err := c.openListed(ctx, open)
	if errors.Is(err, queue.ErrUnknownQueue) && create {
		t, err = c.createQueue(ctx, cfg, open)
		if err != nil && (!errors.Is(err, queue.ErrUnknownQueue) || errors.Is(err, errCreateUnanswered)) {
			return nil, err
		}
	}
	if errors.Is(err, queue.ErrUnknownQueue) {
		return nil, fmt.Errorf("%w %q: declare it (dispatcher queue add %s), start an agent that serves it, or submit through the dispatcher (fleet.api.submit, HTTP), which creates it", queue.ErrUnknownQueue, cfg.QueueName(), cfg.QueueName())
	}
	if err != nil {
		return nil, fmt.Errorf("dispatcher: queue %s: %w", cfg.QueueName(), err)
	}
	c.queues.mu.Lock()
	if c.queues.topos == nil {
		c.queues.topos = map[string]*queue.Topology{}
	}
	c.queues.topos[cfg.QueueName()] = t
	c.queues.mu.Unlock()
	return t, nil
}

// createQueue creates the queue cfg names, within the limit: one creation
// at a time, so that submits racing to new queues cannot all pass the
// count. A queue another submit made meanwhile is opened.
func (c *Client) createQueue(ctx context.Context, cfg, open queue.Config) (*queue.Topology, error) {
	c.queues.createMu.Lock()
	defer c.queues.createMu.Unlock()
	if t, err := c.openListed(ctx, open); !errors.Is(err, queue.ErrUnknownQueue) {
		return t, err
	}
	if err := c.roomForQueue(ctx, cfg.QueueName()); err != nil {
		return nil, err
	}
	t, err := queue.EnsureQueue(ctx, c.js, cfg)
	if errors.Is(err, context.DeadlineExceeded) {
		// A user the server does not let create streams gets no answer
		// at all (the request is dropped as a permissions violation).
		return nil, fmt.Errorf("%w %q, and %w: is this dispatcher's NATS user allowed to create streams? "+
			"(deploy/nats-server.conf's is not: declare the queue with its lines there and dispatcher queue add %s; see README, Queues): %w",
			queue.ErrUnknownQueue, cfg.QueueName(), errCreateUnanswered, cfg.QueueName(), err)
	}
	return t, err
}

// errCreateUnanswered is in the error of a queue creation NATS did not
// answer in time.
var errCreateUnanswered = errors.New("creating it got no answer from NATS in time")

// openListed opens the queue open names. A client that may create queues
// (dispatcher serve) first looks for its jobs stream among the streams the
// server lists, and fails with queue.ErrUnknownQueue at once when it is not
// there: a user who may list streams but not look up a queue nobody
// declared (deploy/nats-server.conf's dispatcher) would wait out the
// request's timeout for the look-up the server drops. Other clients may
// not list streams (deploy's client user), so they look the queue up.
func (c *Client) openListed(ctx context.Context, open queue.Config) (*queue.Topology, error) {
	if !c.queues.create {
		return queue.OpenQueue(ctx, c.js, open)
	}
	names, err := queue.ListQueues(ctx, c.js, c.topo.Config)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(names, open.QueueName()) {
		return nil, fmt.Errorf("%w %q", queue.ErrUnknownQueue, open.QueueName())
	}
	return queue.OpenQueue(ctx, c.js, open)
}

// roomForQueue refuses to create queue name on demand once there are as
// many queues as the limit, or when its name differs from an existing
// queue's only in case.
func (c *Client) roomForQueue(ctx context.Context, name string) error {
	limit := c.queues.max
	if limit <= 0 {
		limit = DefaultMaxQueues
	}
	names, err := queue.ListQueues(ctx, c.js, c.topo.Config)
	if err != nil {
		return err
	}
	for _, have := range names {
		// Most likely a typo, whose jobs would wait in a queue nobody serves.
		if strings.EqualFold(have, name) {
			return &queue.BadRequestError{Reason: fmt.Sprintf("queue %q differs from queue %q only in case: did you mean %s? (declare it with dispatcher queue add to have both)", name, have, have)}
		}
	}
	if len(names) >= limit {
		return fmt.Errorf("%w: %d queues exist, the most a submit may create (dispatcher serve --max-queues); declare queue %s with dispatcher queue add, or submit to an existing one",
			ErrTooManyQueues, len(names), name)
	}
	return nil
}

// AddQueue declares queue name with limits: it creates its jobs stream and
// consumers, or updates the limits of an existing one (its storage is fixed
// at creation). Declaring an existing queue again is safe.
func (c *Client) AddQueue(ctx context.Context, name string, limits queue.QueueLimits) (*queue.Topology, error) {
	if err := queue.ValidateQueueName(name); err != nil {
		return nil, &queue.BadRequestError{Reason: err.Error()}
	}
	cfg := c.topo.Config.ForQueue(name)
	cfg.Limits, cfg.DeclareLimits = limits, true
	open := cfg
	open.Partitions = 0
	if have, err := queue.OpenQueue(ctx, c.js, open); err == nil {
		// Keep what an existing queue was created with.
		cfg.Partitions = have.Config.Partitions
		if cfg.Limits.Storage == "" {
			cfg.Limits.Storage = "file"
			if have.Jobs.CachedInfo().Config.Storage == jetstream.MemoryStorage {
				cfg.Limits.Storage = "memory"
			}
		}
	}
	t, err := queue.EnsureQueue(ctx, c.js, cfg)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: add queue %s: %w", cfg.QueueName(), err)
	}
	c.queues.mu.Lock()
	if c.queues.topos == nil {
		c.queues.topos = map[string]*queue.Topology{}
	}
	c.queues.topos[cfg.QueueName()] = t
	c.queues.mu.Unlock()
	return t, nil
}

// SubmitTo is SubmitSeq on queue q ("" is the default queue): session ""
// publishes to "<prefix>.job.<q>.any", else to
// "<prefix>.job.<q>.s.<session>".
func (c *Client) SubmitTo(ctx context.Context, q, session string, job *queue.Job) (string, uint64, error) {
	t, err := c.Queue(ctx, q)
	if err != nil {
		return "", 0, err
	}
	ack, err := t.Submit(ctx, session, job)
	if err != nil {
		return "", 0, err
	}
	return job.ID, ack.Sequence, nil
}

// ResultOn is ResultFor for a job of queue q: while it waits it checks the
// registry, and calls noServer once (when not nil) if no live agent serves
// q, with the number of live agents (serving other queues), so that a
// caller can say why the job waits.
func (c *Client) ResultOn(ctx context.Context, q, id string, seq uint64, noServer func(agents int)) (*queue.Result, error) {
	t, err := c.Queue(ctx, q)
	if err != nil {
		return nil, err
	}
	var unserved func([]queue.AgentInfo) bool
	if noServer != nil {
		unserved = func(agents []queue.AgentInfo) bool {
			if len(servers(agents, t.Config.QueueName())) > 0 {
				return false
			}
			noServer(len(agents))
			return true
		}
	}
	return c.waitResult(ctx, t, id, seq, unserved)
}

// servers returns the names of the agents serving q.
func servers(agents []queue.AgentInfo, q string) []string {
	var out []string
	for i := range agents {
		if agents[i].Serves(q) {
			out = append(out, agents[i].Name)
		}
	}
	return out
}

// QueueStatus is one queue as `dispatcher status`, the metrics and the HTTP
// API show it.
type QueueStatus struct {
	Name   string `json:"name"`
	Stream string `json:"stream"`
	// Waiting is every job in the queue's stream: not yet delivered, held
	// by an agent, or waiting for a retry. Delayed jobs and periodic
	// schedules, which the stream holds too, are not counted.
	Waiting uint64 `json:"waiting"`
	// Pending is the jobs not yet delivered, Partitions and any together
	// (the backlog an autoscaler should look at); AckPending the delivered
	// ones not yet acked.
	Pending    uint64 `json:"pending"`
	AckPending int    `json:"ack_pending"`
	// Redelivered jobs have been delivered more than once; Unassigned
	// partitions have no live lease (no agent consumes them).
	Redelivered int `json:"redelivered"`
	Unassigned  int `json:"unassigned_partitions"`
	// Agents serve the queue now; Workers is their workers for it.
	Agents  []string `json:"agents"`
	Workers int      `json:"workers"`
	// OldestWaiting is when the oldest job in the queue was published (zero
	// if none; a delayed job counts from when it fired); OldestAge how long
	// ago that was.
	OldestWaiting time.Time     `json:"oldest_waiting,omitzero"`
	OldestAge     time.Duration `json:"oldest_age_ns,omitempty"`
	// Limits are the queue's stream limits (0: unlimited).
	Limits queue.QueueLimits `json:"limits"`
}

// QueueStatuses returns every queue that has a jobs stream, plus any queue
// an agent serves whose stream is missing, "default" first: the data behind
// `dispatcher status`, the metrics and GET /v1/queues (Client.Queues).
func (c *Client) QueueStatuses(ctx context.Context) ([]QueueStatus, error) {
	names, err := queue.ListQueues(ctx, c.js, c.topo.Config)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: %w", err)
	}
	agents, err := c.topo.ListAgents(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: list agents: %w", err)
	}
	for i := range agents {
		for _, l := range agents[i].Queues {
			if !contains(names, l.Queue) {
				names = append(names, l.Queue)
			}
		}
	}
	now := time.Now()
	out := make([]QueueStatus, 0, len(names))
	for _, n := range names {
		qs := QueueStatus{Name: n, Stream: c.topo.Config.ForQueue(n).JobsStream(), Agents: []string{}}
		for i := range agents {
			if l, ok := agents[i].Load(n); ok {
				qs.Agents = append(qs.Agents, agents[i].Name)
				qs.Workers += l.Workers
			}
		}
		t, err := c.Queue(ctx, n)
		if errors.Is(err, queue.ErrUnknownQueue) {
			out = append(out, qs) // served, but no agent could create it yet
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := fillQueueStatus(ctx, t, &qs, now); err != nil {
			return nil, err
		}
		out = append(out, qs)
	}
	return out, nil
}

func contains(names []string, n string) bool {
	for _, m := range names {
		if m == n {
			return true
		}
	}
	return false
}

// fillQueueStatus reads a queue's stream and consumers.
func fillQueueStatus(ctx context.Context, t *queue.Topology, qs *QueueStatus, now time.Time) error {
	si, err := t.Jobs.Info(ctx)
	if err != nil {
		return fmt.Errorf("dispatcher: queue %s: %w", qs.Name, err)
	}
	consumers, err := t.Consumers(ctx)
	if err != nil {
		return fmt.Errorf("dispatcher: queue %s: %w", qs.Name, err)
	}
	for _, info := range consumers {
		qs.Pending += info.NumPending
		qs.AckPending += info.NumAckPending
		qs.Redelivered += info.NumRedelivered
	}
	// The stream holds the queue's delayed jobs and periodic schedules
	// too; they are no jobs waiting.
	if qs.Waiting, qs.OldestWaiting, err = t.WaitingJobs(ctx, si, consumers); err != nil {
		return fmt.Errorf("dispatcher: queue %s: %w", qs.Name, err)
	}
	if !qs.OldestWaiting.IsZero() {
		qs.OldestAge = now.Sub(qs.OldestWaiting)
	}
	if si.Config.MaxMsgs > 0 {
		qs.Limits.MaxMsgs = si.Config.MaxMsgs
	}
	if si.Config.MaxBytes > 0 {
		qs.Limits.MaxBytes = si.Config.MaxBytes
	}
	qs.Limits.Replicas = si.Config.Replicas
	qs.Limits.Storage = "file"
	if si.Config.Storage == jetstream.MemoryStorage {
		qs.Limits.Storage = "memory"
	}
	owners, err := t.LeaseOwners(ctx)
	if err != nil {
		return fmt.Errorf("dispatcher: queue %s: leases: %w", qs.Name, err)
	}
	qs.Unassigned = max(0, t.Config.Partitions-len(owners))
	return nil
}
