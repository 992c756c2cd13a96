package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// maxSweep bounds the jobs one sweep of one queue dead-letters.
const maxSweep = 1000

// sweeper watches every queue: it starts a max-deliveries watcher for each
// queue it finds and, when after > 0, dead-letters as unroutable the jobs of
// a queue that no live agent has served for after, once they have waited
// that long.
type sweeper struct {
	c       *Client
	after   time.Duration
	log     *zap.Logger
	watched map[string]bool
	// unserved is when each queue was first seen without a live agent
	// serving it (this sweeper's view; a restart starts it afresh).
	unserved map[string]time.Time
}

// run sweeps until ctx ends.
func (s *sweeper) run(ctx context.Context) {
	every := 5 * time.Second
	if s.after > 0 {
		every = min(every, max(s.after/4, 100*time.Millisecond))
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := s.sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("queue sweep", zap.Error(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *sweeper) sweep(ctx context.Context) error {
	names, err := queue.ListQueues(ctx, s.c.js, s.c.topo.Config)
	if err != nil {
		return err
	}
	var agents []queue.AgentInfo
	if s.after > 0 {
		if agents, err = s.c.topo.ListAgents(ctx); err != nil {
			return err
		}
	}
	for _, n := range names {
		t, err := s.c.Queue(ctx, n)
		if err != nil {
			return err
		}
		// Memory-stored consumers are lost with a server restart; agents
		// whose NATS user may not create consumers wait for these.
		if made, err := t.RecreateMissingConsumers(ctx); err != nil {
			s.log.Warn("recreate memory-stored consumers", zap.String("queue", n), zap.Error(err))
		} else if made > 0 {
			s.log.Info("recreated memory-stored consumers lost with a server restart", zap.String("queue", n), zap.Int("consumers", made))
		}
		if n == s.c.topo.Config.QueueName() {
			// One results stream serves every queue.
			if made, err := t.RecreateResultsStream(ctx); err != nil {
				s.log.Warn("recreate memory-stored results stream", zap.Error(err))
			} else if made {
				s.log.Info("recreated the memory-stored results stream lost with a server restart")
			}
		}
		if !s.watched[n] && n != s.c.topo.Config.QueueName() {
			// Serve watches its own queue already.
			if err := t.WatchMaxDeliveries(ctx, s.c.nc, "dispatcher", s.log); err != nil {
				return err
			}
			s.watched[n] = true
		}
		if s.after <= 0 {
			continue
		}
		if len(servers(agents, n)) > 0 {
			delete(s.unserved, n)
			continue
		}
		since, ok := s.unserved[n]
		if !ok {
			since = time.Now()
			s.unserved[n] = since
		}
		// A job is unroutable once it has waited `after` and its queue has
		// had no server for as long: a queue whose agents all restart at
		// once does not lose its old backlog.
		if time.Since(since) >= s.after {
			if err := s.deadLetterUnserved(ctx, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// deadLetterUnserved dead-letters, oldest first, the jobs of t's queue
// published more than s.after ago.
func (s *sweeper) deadLetterUnserved(ctx context.Context, t *queue.Topology) error {
	si, err := t.Jobs.Info(ctx)
	if err != nil || si.State.Msgs == 0 {
		return err
	}
	q := t.Config.QueueName()
	cutoff := time.Now().Add(-s.after)
	done := 0
	for seq := si.State.FirstSeq; seq <= si.State.LastSeq && done < maxSweep; seq++ {
		m, err := t.Jobs.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("queue %s: job %d: %w", q, seq, err)
		}
		if m.Time.After(cutoff) {
			return nil // jobs are stored in time order: the rest are younger
		}
		if queue.IsScheduleSubject(m.Subject) {
			// A periodic schedule or a delayed job not yet due: no agent
			// takes these, the server fires them. Its job, once fired,
			// waits like any other.
			continue
		}
		if taker, err := s.takenNow(ctx, t, m.Subject); err != nil {
			return fmt.Errorf("queue %s: job %d: %w", q, seq, err)
		} else if taker != "" {
			// An agent came: the queue is served again. Its clock
			// starts afresh once no agent serves it.
			delete(s.unserved, q)
			s.log.Info("queue served again: sweep stopped", zap.String("queue", q), zap.String("evidence", taker), zap.Int("dead_lettered", done))
			return nil
		}
		if err := s.unroutable(ctx, t, m); err != nil {
			return err
		}
		done++
	}
	return nil
}

// takenNow says, just before a job is dead-lettered, whether its consumer
// is being pulled from: an agent that started serving the queue after the
// sweep began may be about to take the job, and a job it runs must not
// also end as unroutable. Evidence is a pull request waiting at the
// consumer, or a delivery within s.after (the queue has had no live agent
// for that long, so an older delivery was to an agent now gone). It
// returns what it saw, "" for nothing. This narrows the race to the few
// milliseconds between this look and the job's deletion; it cannot close
// it, since the dispatcher never takes jobs itself.
func (s *sweeper) takenNow(ctx context.Context, t *queue.Topology, subject string) (string, error) {
	cons, err := t.ConsumerOf(ctx, subject)
	if errors.Is(err, queue.ErrNoTopology) {
		return "", nil // no consumer (a memory-stored one not yet made again): nobody pulls
	}
	if err != nil {
		return "", err
	}
	ci, err := cons.Info(ctx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	switch {
	case ci.NumWaiting > 0:
		return fmt.Sprintf("%d pull request(s) waiting at consumer %s", ci.NumWaiting, ci.Name), nil
	case ci.Delivered.Last != nil && ci.TimeStamp.Sub(*ci.Delivered.Last) < s.after:
		// Both times are the server's.
		return fmt.Sprintf("consumer %s delivered a job %s ago", ci.Name, ci.TimeStamp.Sub(*ci.Delivered.Last).Round(time.Millisecond)), nil
	}
	return "", nil
}

// unroutable stores the job's dead letter and unroutable result (under the
// id rule, in that order, as agents do), then deletes it from its queue.
func (s *sweeper) unroutable(ctx context.Context, t *queue.Topology, m *jetstream.RawStreamMsg) error {
	q := t.Config.QueueName()
	reason := fmt.Sprintf("no agent served queue %q for %s (dispatcher serve --unroutable-after %s)",
		q, time.Since(m.Time).Round(time.Second), s.after)
	var id, session string
	job, err := queue.ParseJob(m.Subject, m.Header, m.Data, m.Sequence, t.Config)
	var bre *queue.BadRequestError
	switch {
	case err == nil:
		id, session = job.ID, job.Session
	case errors.As(err, &bre):
		id, session = bre.JobID, bre.Session
	}
	now := time.Now().UTC()
	r := &queue.Result{
		ID: id, JobSeq: m.Sequence, Queue: q, Session: session, Agent: "dispatcher",
		EnqueuedAt: m.Time, FinishedAt: now,
		Error: &queue.ErrorInfo{Kind: queue.KindUnroutable, Message: reason},
	}
	d := &queue.DeadLetter{
		JobID: id, Session: session, Subject: m.Subject, Queue: q, Job: m.Data, Headers: m.Header,
		Kind: queue.KindUnroutable, Error: reason, Agent: "dispatcher", StreamSeq: m.Sequence, At: now,
	}
	if err := t.WriteDeadLetter(ctx, d); err != nil {
		return fmt.Errorf("queue %s: dead letter %s: %w", q, id, err)
	}
	if err := t.StoreResult(ctx, r); err != nil {
		return fmt.Errorf("queue %s: store unroutable result of %s: %w", q, id, err)
	}
	if err := t.Jobs.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("queue %s: delete unroutable job %s: %w", q, id, err)
	}
	s.log.Warn("job unroutable, moved to DLQ", zap.String("queue", q), zap.String("job_id", id), zap.Uint64("stream_seq", m.Sequence))
	return nil
}
