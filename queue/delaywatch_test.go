package queue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/queue"
)

// TestWatchDelaysDropsStraySchedules: a one-shot schedule a client puts on
// a delay subject is deleted before it fires when it is no delayed job: its
// target is a schedule or delay subject (a rollup there replaced the
// operator's periodic schedule; anything else there stayed for ever), or it
// carries Nats-Schedule-Source (someone else's delayed job or the operator's
// periodic job, fired at will) or another schedule header. The dispatcher's
// own delayed jobs stay and fire, and the operator's schedule is untouched.
func TestWatchDelaysDropsStraySchedules(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, Schedules: true})
	ctx := testCtx(t)
	if err := b.topo.WatchDelays(ctx, b.nc, zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	gpu, err := queue.EnsureQueue(ctx, b.js, b.cfg.ForQueue("gpu"))
	if err != nil {
		t.Fatal(err)
	}
	tick, err := b.topo.AddSchedule(ctx, &queue.Schedule{Name: "tick", Every: "1h", Job: &queue.Job{Command: "echo"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if _, err := b.topo.SubmitAt(ctx, "", &queue.Job{ID: "vic1", Command: "echo"}, later); err != nil {
		t.Fatal(err)
	}
	// The rollup onto the operator's schedule is due with "ok", a delayed
	// job of ours: once "ok" fired, so would have the rollup.
	soon := time.Now().Add(1500 * time.Millisecond)
	if _, err := b.topo.SubmitAt(ctx, "", &queue.Job{ID: "ok", Command: "echo"}, soon); err != nil {
		t.Fatal(err)
	}

	type stray struct {
		topo    *queue.Topology
		id      string
		at      time.Time
		target  string
		headers map[string]string
	}
	strays := []stray{
		{b.topo, "rollup", soon, b.cfg.ScheduleSubject("tick"), map[string]string{"Nats-Schedule-Rollup": "sub"}},
		{b.topo, "plant-schedule", later, b.cfg.ScheduleSubject("evil"), nil},
		{b.topo, "plant-delay", later, b.cfg.DelaySubject("junk"), nil},
		{b.topo, "steal", later, b.cfg.AnySubject(), map[string]string{"Nats-Schedule-Source": b.cfg.DelaySubject("vic1")}},
		{b.topo, "trigger", later, b.cfg.AnySubject(), map[string]string{"Nats-Schedule-Source": b.cfg.ScheduleSubject("tick")}},
		{b.topo, "rollup-any", later, b.cfg.AnySubject(), map[string]string{"Nats-Schedule-Rollup": "sub"}},
		// Nats-Schedule-TTL the server refuses here (the stream has no
		// per-message TTL); a header it ignores today may mean something
		// tomorrow.
		{b.topo, "unknown", later, b.cfg.AnySubject(), map[string]string{"Nats-Schedule-Someday": "x"}},
		{gpu, "plant-gpu", later, gpu.Config.ScheduleSubject("evil"), nil},
	}
	for _, s := range strays {
		msg := nats.NewMsg(s.topo.Config.DelaySubject(s.id))
		msg.Data = []byte(`{"id":"` + s.id + `","command":"echo"}`)
		msg.Header.Set(queue.ScheduleHeader, "@at "+s.at.UTC().Format(time.RFC3339Nano))
		msg.Header.Set(queue.ScheduleTargetHeader, s.target)
		for k, v := range s.headers {
			msg.Header.Set(k, v)
		}
		if _, err := b.js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s: %v", s.id, err)
		}
	}
	eventually(t, 10*time.Second, func() error {
		for _, s := range strays {
			if m, err := s.topo.Jobs.GetLastMsgForSubject(ctx, s.topo.Config.DelaySubject(s.id)); err == nil {
				return fmt.Errorf("%s is still stored (seq %d, target %s)", m.Subject, m.Sequence, s.target)
			}
		}
		return nil
	})
	eventually(t, 10*time.Second, func() error {
		if _, err := b.topo.Jobs.GetLastMsgForSubject(ctx, b.cfg.AnySubject()); err != nil {
			return fmt.Errorf("the delayed job ok has not fired: %v", err)
		}
		return nil
	})
	m, err := b.topo.Jobs.GetLastMsgForSubject(ctx, b.cfg.ScheduleSubject("tick"))
	if err != nil || m.Sequence != tick.Sequence || m.Header.Get(queue.ScheduleHeader) != "@every 1h0m0s" {
		t.Fatalf("the operator's schedule tick: %+v, %v; want it as added (seq %d)", m, err, tick.Sequence)
	}
	if list, n, err := b.topo.Delayed(ctx, 0); err != nil || n != 1 || list[0].Name != "vic1" {
		t.Fatalf("Delayed = %+v, %d, %v; want vic1 only", list, n, err)
	}
	for topo, want := range map[*queue.Topology]int{b.topo: 1, gpu: 0} {
		if list, err := topo.Schedules(ctx); err != nil || len(list) != want {
			t.Fatalf("queue %s: Schedules = %+v, %v; want %d (no phantom)", topo.Config.QueueName(), list, err, want)
		}
	}
}
