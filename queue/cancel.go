package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Cancels.
//
// A cancel is a message on "<prefix>.cancel.<job id>", stored by the cancels
// stream (CancelStream) for CancelTTL. The stream captures the subject
// itself, so a plain NATS publish (`nats pub fleet.cancel.<id> ''`) is a
// durable cancel with no dispatcher running; the body is ignored. The stream
// keeps one message per subject, so cancelling again only refreshes it.
//
// Agents follow the stream from its start (FollowCancels) and keep the ids
// in memory; nothing is asked of NATS per job. A cancel covers the jobs with
// its id that were enqueued before it, or at most the jobs stream's dedup
// window after it (a job published right after its cancel): a job that
// reuses the id later than that is a new job and runs (see CancelCovers).

// DefaultCancelTTL is the default Config.CancelTTL: as long as results are
// kept by default, so a job that waits a long time in its queue still finds
// its cancel.
const DefaultCancelTTL = 24 * time.Hour

// CancelStream is the cancels stream's name, e.g. "FLEET_CANCELS".
func (c Config) CancelStream() string { return strings.ToUpper(c.Prefix) + "_CANCELS" }

// CancelSubject is where a cancel of job id is published,
// "fleet.cancel.<id>".
func (c Config) CancelSubject(id string) string { return c.Prefix + ".cancel." + id }

func (c Config) cancelsStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              c.CancelStream(),
		Description:       "procfleet cancels, one per job id, kept for the cancel TTL",
		Subjects:          []string{c.CancelSubject("*")},
		Retention:         jetstream.LimitsPolicy,
		Storage:           c.Storage,
		Replicas:          c.Replicas,
		MaxAge:            c.CancelTTL,
		MaxMsgsPerSubject: 1,
		Discard:           jetstream.DiscardOld,
		// A cancel's body is ignored; keep it small.
		MaxMsgSize:  4096,
		AllowDirect: true,
	}
}

// CancelCovers reports whether a cancel recorded at cancelAt applies to a
// job enqueued at enqueuedAt (both stream timestamps): the job was enqueued
// before the cancel, or within the jobs stream's dedup window after it.
func CancelCovers(cancelAt, enqueuedAt time.Time, dedupWindow time.Duration) bool {
	return enqueuedAt.Before(cancelAt.Add(dedupWindow))
}

// Cancel records a cancel of job id durably and returns once the cancels
// stream has stored it. Cancelling is idempotent, and cancelling a job that
// has already ended changes nothing: its result stays. A missing cancels
// stream (a topology made by an older version, before `dispatcher serve`
// ran Ensure) is an error wrapping ErrNoTopology.
func (t *Topology) Cancel(ctx context.Context, id string) error {
	if !ValidToken(id) {
		return fmt.Errorf("%w: cancel: job id %q must be 1-128 characters of [A-Za-z0-9_-]", ErrBadRequest, truncate(id))
	}
	_, err := t.JS.Publish(ctx, t.Config.CancelSubject(id), nil)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("%w: no stream stores %s (run `dispatcher serve` once to add %s)",
			ErrNoTopology, t.Config.CancelSubject(id), t.Config.CancelStream())
	}
	if err != nil {
		return fmt.Errorf("queue: cancel %s: %w", id, err)
	}
	return nil
}

// CancelDelayed drops the delayed job id if it is still waiting to be due
// (its schedule on DelaySubject) and stores its outcome, "canceled": a
// cancel record covers a fired job only within the dedup window of the
// cancel (CancelCovers), which a job due later would outlive. The result's
// JobSeq is the delay message's sequence (what SubmitAt's PubAck gave): the
// job never had another, and a later job reusing the id must not take this
// outcome for its own. It reports whether there was such a job.
func (t *Topology) CancelDelayed(ctx context.Context, id string) (bool, error) {
	if !ValidToken(id) || !t.SchedulesAllowed() {
		return false, nil
	}
	m, err := t.Jobs.GetLastMsgForSubject(ctx, t.Config.DelaySubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("queue: cancel delayed job %s: %w", id, err)
	}
	if err := t.Jobs.DeleteMsg(ctx, m.Sequence); errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil // it fired meanwhile: the cancel record covers it
	} else if err != nil {
		return false, fmt.Errorf("queue: cancel delayed job %s: %w", id, err)
	}
	_, session, _ := t.Config.ParseJobSubject(m.Header.Get(ScheduleTargetHeader))
	now := time.Now().UTC()
	err = t.StoreResult(ctx, &Result{ID: id, JobSeq: m.Sequence, Queue: t.Config.QueueName(), Session: session, FinishedAt: now,
		Error: &ErrorInfo{Kind: KindCanceled, Message: "canceled before it was due"}})
	if err != nil {
		return true, fmt.Errorf("queue: cancel delayed job %s: store its result: %w", id, err)
	}
	return true, nil
}

// CancelFeed follows the cancels stream: see FollowCancels.
type CancelFeed struct {
	maxAge   time.Duration
	cc       jetstream.ConsumeContext
	caught   chan struct{}
	caughtMu sync.Once
}

// FollowCancels calls fn(id, recordedAt) for every cancel in the cancels
// stream, from the oldest kept, then for each new one as it is stored, from
// one goroutine, until Stop. CaughtUp is closed once every cancel stored
// before the call has been passed to fn. It uses one ordered consumer
// (headers only, no acks); at rest that is one idle pull request renewed by
// the client library, nothing per job. A missing cancels stream is an error
// wrapping ErrNoTopology.
func (t *Topology) FollowCancels(ctx context.Context, fn func(id string, at time.Time)) (*CancelFeed, error) {
	name := t.Config.CancelStream()
	s, err := t.JS.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w: stream %s missing", ErrNoTopology, name)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", name, err)
	}
	last := info.State.LastSeq
	f := &CancelFeed{caught: make(chan struct{}), maxAge: info.Config.MaxAge}
	if info.State.Msgs == 0 {
		f.caughtUp()
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverAllPolicy,
		HeadersOnly:   true,
	})
	if errors.Is(err, context.DeadlineExceeded) {
		// A refused request goes unanswered: name the likely cause.
		return nil, fmt.Errorf("queue: follow %s: no answer to the consumer create (may this user create consumers on %s? see deploy/nats-server.conf): %w", name, name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: follow %s: %w", name, err)
	}
	prefix := t.Config.CancelSubject("")
	f.cc, err = cons.Consume(func(m jetstream.Msg) {
		meta, err := m.Metadata()
		if err != nil {
			return
		}
		if id, ok := strings.CutPrefix(m.Subject(), prefix); ok && ValidToken(id) {
			fn(id, meta.Timestamp)
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			f.caughtUp()
		}
	})
	if err != nil {
		return nil, fmt.Errorf("queue: follow %s: %w", name, err)
	}
	return f, nil
}

func (f *CancelFeed) caughtUp() { f.caughtMu.Do(func() { close(f.caught) }) }

// CaughtUp is closed once the cancels stored before FollowCancels was
// called have all been seen.
func (f *CancelFeed) CaughtUp() <-chan struct{} { return f.caught }

// MaxAge is how long the cancels stream keeps a cancel, as the server has
// it (CancelTTL of whoever ran Ensure).
func (f *CancelFeed) MaxAge() time.Duration { return f.maxAge }

// Stop ends the feed and returns once fn is no longer called.
func (f *CancelFeed) Stop() {
	f.cc.Stop()
	<-f.cc.Closed()
}

// OpenCancels checks that the cancels stream exists; it returns
// ErrNoTopology if it is missing (a topology made by an older version:
// Ensure adds it).
func OpenCancels(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	_, err := openStream(ctx, js, cfg.WithDefaults().CancelStream())
	return err
}
