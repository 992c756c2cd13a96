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

// WatchDelays keeps the schedules on DelaySubject one-shot. A client may
// publish a delayed job there (SubmitAt's "@at <time>"), but subject
// permissions cannot see the schedule header, so a client could as well
// put a repeating schedule ("@every 1s", a cron pattern) there, firing a
// job for ever, out of `schedule list`'s sight. WatchDelays deletes such a
// message from the jobs stream as soon as the stream holds it, before it
// fires. Watchers share the queue group "<prefix>-delays". It returns once
// the subscription is registered and runs until ctx is done; while no
// watcher runs (no dispatcher), such a schedule fires.
func (t *Topology) WatchDelays(ctx context.Context, nc *nats.Conn, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	sub, err := nc.QueueSubscribe(t.Config.DelaySubject("*"), t.Config.Prefix+"-delays", func(m *nats.Msg) {
		if pattern := m.Header.Get(ScheduleHeader); !oneShot(pattern) {
			t.dropRepeating(ctx, m.Subject, pattern, log)
		}
	})
	if err != nil {
		return fmt.Errorf("queue: watch delayed jobs: %w", err)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("queue: watch delayed jobs: %w", err)
	}
	context.AfterFunc(ctx, func() { _ = sub.Unsubscribe() })
	return nil
}

// oneShot reports whether a schedule pattern fires once.
func oneShot(pattern string) bool { return strings.HasPrefix(pattern, "@at ") }

// dropRepeating deletes the repeating schedules the jobs stream holds on
// subject, waiting for the one with pattern (the copy the watcher got may
// come before the stream has stored it).
func (t *Topology) dropRepeating(ctx context.Context, subject, pattern string, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		seen, err := t.deleteRepeating(ctx, subject, pattern, log)
		if err != nil {
			log.Error("cannot delete a repeating schedule on a delayed job's subject", zap.String("subject", subject), zap.Error(err))
			return
		}
		if seen {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deleteRepeating deletes every message on subject whose schedule repeats;
// it reports whether one of them had pattern.
func (t *Topology) deleteRepeating(ctx context.Context, subject, pattern string, log *zap.Logger) (bool, error) {
	seen := false
	for next := uint64(1); ; {
		m, err := t.Jobs.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return seen, nil
		}
		if err != nil {
			return seen, err
		}
		next = m.Sequence + 1
		p := m.Header.Get(ScheduleHeader)
		if oneShot(p) {
			continue
		}
		seen = seen || p == pattern
		if err := t.Jobs.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return seen, err
		}
		log.Warn("deleted a repeating schedule published on a delayed job's subject (only `dispatcher schedule add` makes repeating ones)",
			zap.String("subject", subject), zap.String("schedule", p), zap.Uint64("seq", m.Sequence))
	}
}
