package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// WatchDelays keeps every queue's delay subjects to what SubmitAt puts
// there: one-shot delayed jobs. A client may publish a delayed job there (SubmitAt's "@at
// <time>" to a job subject of that queue), but subject permissions cannot see
// the schedule headers, so a client could as well put there
//
//   - a repeating schedule ("@every 1s", a cron pattern), firing a job for
//     ever, out of `schedule list`'s sight;
//   - a target that is not a job subject of the queue: "fleet.schedule.tick"
//     with Nats-Schedule-Rollup replaces the operator's periodic schedule,
//     and "fleet.schedule.x" or "fleet.delay.x" plants a message that never
//     leaves the stream;
//   - Nats-Schedule-Source, which fires the last message of another subject
//     instead of its own body: someone else's delayed job (early, and to a
//     target of the client's choosing) or an operator's periodic job;
//   - Nats-Schedule-Rollup or Nats-Schedule-TTL, or any other schedule
//     header a later server may add.
//
// WatchDelays deletes such a message from its queue's jobs stream as soon as
// the stream holds it, before it fires. Watchers share the queue group
// "<prefix>-delays". It returns once the subscription is registered and runs
// until ctx is done; while no watcher runs (no dispatcher), such a schedule
// fires.
func (t *Topology) WatchDelays(ctx context.Context, nc *nats.Conn, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	// A look may wait for the stream to store what was published: a few at
	// once, on goroutines of their own, so that one never stored (refused
	// by the stream) does not hold up the others.
	slots := make(chan struct{}, 4)
	err := watch(ctx, nc, t.Config.Prefix+".delay.>", t.Config.Prefix+"-delays", func(m *nats.Msg) {
		if t.Config.delayProblem(m.Subject, m.Header) == "" {
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		go func() {
			defer func() { <-slots }()
			t.dropStray(ctx, m.Subject, log)
		}()
	})
	if err != nil {
		return fmt.Errorf("queue: watch delayed jobs: %w", err)
	}
	return nil
}

// oneShot reports whether a schedule pattern fires once.
func oneShot(pattern string) bool { return strings.HasPrefix(pattern, "@at ") }

// delayProblem says why a message published on subject is not a delayed job
// as SubmitAt makes it, or "" if it is one: exactly one Nats-Schedule, "@at
// <time>", and exactly one Nats-Schedule-Target, a job subject of the queue
// whose delay subject it is, and no other schedule header. It allows only
// what it knows rather than refusing what it knows, so that a schedule
// header of a later server is dropped too. Header names are matched
// case-insensitively and with surrounding spaces: the server reads only the
// exact spelling, but a variant it ignores is no delayed job of ours either.
func (c Config) delayProblem(subject string, h nats.Header) string {
	qc, ok := c.delayQueue(subject)
	if !ok {
		return "not a delay subject"
	}
	if len(h.Values(ScheduleHeader)) != 1 || !oneShot(h.Get(ScheduleHeader)) {
		return "not one @at schedule"
	}
	// Exactly one of each: of two, which one counts would be the server's
	// header parsing to decide, not ours.
	target := h.Values(ScheduleTargetHeader)
	if len(target) != 1 || !qc.isPublishedJobSubject(target[0]) {
		return "target not a job subject of queue " + qc.QueueName()
	}
	for k := range h {
		name := strings.ToLower(strings.TrimSpace(k))
		if strings.HasPrefix(name, "nats-schedule") && k != ScheduleHeader && k != ScheduleTargetHeader {
			return "header " + k
		}
	}
	return ""
}

// delayQueue returns the configuration of the queue whose delay subject
// subject is: "<prefix>.delay.<id>" is the default queue's,
// "<prefix>.delay.<queue>.<id>" a named queue's.
func (c Config) delayQueue(subject string) (Config, bool) {
	rest, ok := strings.CutPrefix(subject, c.Prefix+".delay.")
	if !ok {
		return c, false
	}
	q, id, named := strings.Cut(rest, ".")
	if !named {
		return c.ForQueue(""), q != ""
	}
	if id == "" || strings.Contains(id, ".") || ValidateQueueName(q) != nil || q == DefaultQueue {
		return c, false
	}
	return c.ForQueue(q), true
}

// isPublishedJobSubject reports whether subject is one a job of the
// configured queue is published on (its session or any subject), the only
// targets SubmitAt gives.
func (c Config) isPublishedJobSubject(subject string) bool {
	session, ok := c.jobSubject(subject)
	return ok && (subject == c.AnySubject() || subject == c.SessionSubject(session))
}

// dropStray deletes the messages stored on subject, in the jobs stream of
// its queue, that are not delayed jobs (see delayProblem), waiting for one
// (the copy the watcher got may come before the stream has stored it).
func (t *Topology) dropStray(ctx context.Context, subject string, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var s jetstream.Stream
	for {
		var err error
		if s == nil {
			var name string
			if name, err = t.JS.StreamNameBySubject(ctx, subject); err == nil {
				s, err = t.JS.Stream(ctx, name)
			}
		}
		deleted := false
		if err == nil {
			deleted, err = t.deleteStray(ctx, s, subject, log)
		}
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return // no stream holds it: nothing fires
		case err != nil && ctx.Err() != nil:
			return // shutting down, or it was never stored
		case err != nil:
			log.Error("cannot delete a stray schedule on a delayed job's subject", zap.String("subject", subject), zap.Error(err))
			return
		case deleted:
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deleteStray deletes every message on subject in s that is not a delayed
// job; it reports whether it deleted one.
func (t *Topology) deleteStray(ctx context.Context, s jetstream.Stream, subject string, log *zap.Logger) (bool, error) {
	deleted := false
	for next := uint64(1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return deleted, nil
		}
		if err != nil {
			return deleted, err
		}
		next = m.Sequence + 1
		why := t.Config.delayProblem(m.Subject, m.Header)
		if why == "" {
			continue
		}
		if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return deleted, err
		}
		deleted = true
		log.Warn("deleted a schedule published on a delayed job's subject that is no delayed job (only `dispatcher schedule add` makes other schedules)",
			zap.String("subject", subject), zap.String("why", why), zap.String("schedule", m.Header.Get(ScheduleHeader)),
			zap.String("target", m.Header.Get(ScheduleTargetHeader)), zap.Uint64("seq", m.Sequence))
	}
}
