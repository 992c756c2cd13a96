package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// ErrNoAgents is returned (wrapped) by waits that give up while no agent is
// registered: the job is queued and will run when an agent starts.
var ErrNoAgents = errors.New("dispatcher: no agent is registered")

// Client submits jobs and reads results. It is safe for concurrent use.
type Client struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	topo   *queue.Topology
	queues queues // the other queues used so far (queues.go)
}

// NewClient opens the fleet's topology on nc. It fails with an error
// wrapping queue.ErrNoTopology if nobody has created it (run
// `dispatcher serve`, or an agent, first), or use EnsureClient. With
// cfg.Partitions 0 it adopts the jobs stream's partition count.
func NewClient(ctx context.Context, nc *nats.Conn, cfg queue.Config) (*Client, error) {
	return newClient(ctx, nc, cfg, queue.Open, false)
}

// EnsureClient is NewClient, creating the topology if it does not exist,
// and creating a queue the first time a job is submitted to it.
func EnsureClient(ctx context.Context, nc *nats.Conn, cfg queue.Config) (*Client, error) {
	return newClient(ctx, nc, cfg, queue.Ensure, true)
}

func newClient(ctx context.Context, nc *nats.Conn, cfg queue.Config,
	open func(context.Context, jetstream.JetStream, queue.Config) (*queue.Topology, error), create bool) (*Client, error) {
	if nc == nil {
		return nil, errors.New("dispatcher: nil NATS connection")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: jetstream: %w", err)
	}
	// Open adopts the stream's partition count when cfg leaves it 0 (the
	// command line's status, submit, dlq: a fleet made with `serve
	// --partitions 8` has no other partition count); Ensure creates with
	// the default.
	topo, err := open(ctx, js, cfg)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: topology on %s: %w", nc.ConnectedUrlRedacted(), err)
	}
	c := &Client{nc: nc, js: js, topo: topo}
	// A client that may create the topology creates the queues it submits
	// to as well (`dispatcher serve`: submitting through it creates a queue
	// on demand).
	c.queues.create = create
	return c, nil
}

// Topology returns the fleet topology the client uses.
func (c *Client) Topology() *queue.Topology { return c.topo }

// Conn returns the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Submit publishes one job (session "" for an anonymous job) and returns its
// id. A job without an id gets one; the id is also the Nats-Msg-Id, so
// resubmitting the same id within the dedup window is a no-op.
func (c *Client) Submit(ctx context.Context, session string, job *queue.Job) (string, error) {
	id, _, err := c.SubmitSeq(ctx, session, job)
	return id, err
}

// SubmitSeq is Submit that also returns the job's sequence in the jobs
// stream (for a duplicate, the sequence of the job it duplicates). Pass it
// to ResultFor: an id may be reused by a later job once the jobs stream's
// dedup window has passed, and the sequence tells the two results apart.
func (c *Client) SubmitSeq(ctx context.Context, session string, job *queue.Job) (string, uint64, error) {
	ack, err := c.topo.Submit(ctx, session, job)
	if err != nil {
		return "", 0, err
	}
	return job.ID, ack.Sequence, nil
}

// Submission is one job for SubmitBatch.
type Submission struct {
	Queue   string // "" is the default queue
	Session string
	Job     *queue.Job
}

// SubmitBatch publishes many jobs with asynchronous publishing and returns
// once every one is acknowledged by the stream, or the first error.
func (c *Client) SubmitBatch(ctx context.Context, jobs []Submission) error {
	futures := make([]jetstream.PubAckFuture, 0, len(jobs))
	for _, s := range jobs {
		t := c.topo
		if s.Queue != "" {
			var err error
			if t, err = c.Queue(ctx, s.Queue); err != nil {
				return err
			}
		}
		f, err := t.SubmitAsync(s.Session, s.Job)
		if err != nil {
			return err
		}
		futures = append(futures, f)
	}
	for i, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("dispatcher: submit %s: %w", jobs[i].Job.ID, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Result waits for the (latest) result of job id. While it waits it checks
// the agent registry; if no agent is registered it calls noAgents once (when
// not nil), so a caller can say so instead of hanging without a word.
func (c *Client) Result(ctx context.Context, id string, noAgents func()) (*queue.Result, error) {
	return c.ResultFor(ctx, id, 0, noAgents)
}

// ResultFor is Result for the job the jobs stream stored at sequence seq
// (from SubmitSeq; 0 for any): the result of another job that reused the id
// is never returned.
func (c *Client) ResultFor(ctx context.Context, id string, seq uint64, noAgents func()) (*queue.Result, error) {
	var unserved func([]queue.AgentInfo) bool
	if noAgents != nil {
		unserved = func(agents []queue.AgentInfo) bool {
			if len(agents) > 0 {
				return false
			}
			noAgents()
			return true
		}
	}
	return c.waitResult(ctx, c.topo, id, seq, unserved)
}

// waitResult waits for the result of job id (at stream sequence seq, 0 for
// any) on t. While it waits it lists the agents every second, until
// unserved (when not nil) reports that it has told the caller nobody will
// run the job.
func (c *Client) waitResult(ctx context.Context, t *queue.Topology, id string, seq uint64, unserved func(agents []queue.AgentInfo) bool) (*queue.Result, error) {
	if unserved == nil {
		return t.WaitJobResult(ctx, c.nc, id, seq)
	}
	wctx, cancel := context.WithCancel(ctx)
	watcherDone := make(chan struct{})
	defer func() {
		cancel()
		<-watcherDone
	}()
	go func() {
		defer close(watcherDone)
		tk := time.NewTicker(time.Second)
		defer tk.Stop()
		for {
			if agents, err := t.ListAgents(wctx); err == nil && unserved(agents) {
				return
			}
			select {
			case <-wctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return t.WaitJobResult(wctx, c.nc, id, seq)
}

// SubmitAndWait submits a job and waits for its own result.
func (c *Client) SubmitAndWait(ctx context.Context, session string, job *queue.Job) (*queue.Result, error) {
	id, seq, err := c.SubmitSeq(ctx, session, job)
	if err != nil {
		return nil, err
	}
	return c.ResultFor(ctx, id, seq, nil)
}
