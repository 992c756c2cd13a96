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

// WatchDelays keeps the schedules on delay subjects one-shot, in every
// queue. A client may publish a delayed job there (SubmitAt's "@at <time>"),
// but subject permissions cannot see the schedule header, so a client could
// as well put a repeating schedule ("@every 1s", a cron pattern) there,
// firing a job for ever, out of `schedule list`'s sight. WatchDelays deletes
// such a message from its queue's jobs stream as soon as the stream holds it,
// before it fires. Watchers share the queue group "<prefix>-delays". It
// returns once the subscription is registered and runs until ctx is done;
// while no watcher runs (no dispatcher), such a schedule fires.
func (t *Topology) WatchDelays(ctx context.Context, nc *nats.Conn, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	// A look may wait for the stream to store what was published: a few at
	// once, on goroutines of their own, so that one never stored (refused
	// by the stream) does not hold up the others.
	slots := make(chan struct{}, 4)
	err := watch(ctx, nc, t.Config.Prefix+".delay.>", t.Config.Prefix+"-delays", func(m *nats.Msg) {
		pattern := m.Header.Get(ScheduleHeader)
		if oneShot(pattern) {
			return
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		go func() {
			defer func() { <-slots }()
			t.dropRepeating(ctx, m.Subject, pattern, log)
		}()
	})
	if err != nil {
		return fmt.Errorf("queue: watch delayed jobs: %w", err)
	}
	return nil
}

// oneShot reports whether a schedule pattern fires once.
func oneShot(pattern string) bool { return strings.HasPrefix(pattern, "@at ") }

// dropRepeating deletes the repeating schedules stored on subject, in the
// jobs stream of its queue, waiting for the one with pattern (the copy the
// watcher got may come before the stream has stored it).
func (t *Topology) dropRepeating(ctx context.Context, subject, pattern string, log *zap.Logger) {
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
		seen := false
		if err == nil {
			seen, err = deleteRepeating(ctx, s, subject, pattern, log)
		}
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
			return // no stream holds it: nothing fires
		case err != nil:
			log.Error("cannot delete a repeating schedule on a delayed job's subject", zap.String("subject", subject), zap.Error(err))
			return
		case seen:
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// deleteRepeating deletes every message on subject in s whose schedule
// repeats; it reports whether one of them had pattern.
func deleteRepeating(ctx context.Context, s jetstream.Stream, subject, pattern string, log *zap.Logger) (bool, error) {
	seen := false
	for next := uint64(1); ; {
		m, err := s.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
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
		if err := s.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return seen, err
		}
		log.Warn("deleted a repeating schedule published on a delayed job's subject (only `dispatcher schedule add` makes repeating ones)",
			zap.String("subject", subject), zap.String("schedule", p), zap.Uint64("seq", m.Sequence))
	}
}
