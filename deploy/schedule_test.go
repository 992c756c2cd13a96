package deploy_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

// TestSchedulePermissions: under the deployed permissions a client submits
// delayed jobs but adds no periodic schedule and touches none of the
// operator's (what it puts on a delay subject that is no delayed job, the
// dispatcher's watch deletes); the dispatcher adds, lists and removes
// schedules; an agent publishes neither.
func TestSchedulePermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	dtopo, dispatcher := s.ensureTopology(t, queue.Config{Schedules: true})
	client := s.connect(t, userClient)
	ctopo := client.open(t)
	ctx := testCtx(t)
	if err := dtopo.WatchDelays(ctx, dispatcher.Conn, nil); err != nil {
		t.Fatalf("dispatcher WatchDelays: %v", err)
	}

	if _, err := ctopo.SubmitAt(ctx, "s1", &queue.Job{ID: "later", Command: "echo"}, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("client SubmitAt: %v", err)
	}
	client.assertNoViolations(t)
	sched := &queue.Schedule{Name: "nightly", Cron: "0 2 * * *", Job: &queue.Job{Command: "echo"}}
	if _, err := dtopo.AddSchedule(ctx, sched, false); err != nil {
		t.Fatalf("dispatcher AddSchedule: %v", err)
	}
	list, err := dtopo.Schedules(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("dispatcher Schedules = %+v, %v", list, err)
	}
	delayed, n, err := dtopo.Delayed(ctx, 0)
	if err != nil || n != 1 || delayed[0].Name != "later" {
		t.Fatalf("dispatcher Delayed = %+v, %d, %v", delayed, n, err)
	}
	if err := dtopo.RemoveSchedule(ctx, "nightly"); err != nil {
		t.Fatalf("dispatcher RemoveSchedule: %v", err)
	}
	if err := dtopo.RemoveDelayed(ctx, "later"); err != nil {
		t.Fatalf("dispatcher RemoveDelayed: %v", err)
	}
	if err := dtopo.RemoveSchedule(ctx, "nightly"); !errors.Is(err, queue.ErrScheduleNotFound) {
		t.Fatalf("second RemoveSchedule: %v", err)
	}
	dispatcher.assertNoViolations(t)

	// A repeating schedule a client puts on a delay subject, which its
	// permissions cannot refuse, is deleted by the dispatcher's watch.
	evil := nats.NewMsg("fleet.delay.evil")
	evil.Data = []byte(`{"command":"echo"}`)
	evil.Header.Set(queue.ScheduleHeader, "@every 1s")
	evil.Header.Set(queue.ScheduleTargetHeader, "fleet.job.any")
	if _, err := ctopo.JS.PublishMsg(ctx, evil); err != nil {
		t.Fatalf("client publish on a delay subject: %v", err)
	}
	sharedtest.Eventually(t, 10*time.Second, func() error {
		if m, err := dtopo.Jobs.GetLastMsgForSubject(ctx, "fleet.delay.evil"); err == nil {
			return fmt.Errorf("the repeating schedule is still stored (seq %d)", m.Sequence)
		}
		return nil
	})

	// So is a one-shot one whose target is no job subject (a rollup there
	// replaced the operator's schedule) or that fires another subject's
	// message (Nats-Schedule-Source: the operator's periodic job, or
	// someone else's delayed job, at will).
	keep, err := dtopo.AddSchedule(ctx, &queue.Schedule{Name: "keep", Every: "1h", Job: &queue.Job{Command: "echo"}}, false)
	if err != nil {
		t.Fatalf("dispatcher AddSchedule: %v", err)
	}
	at := "@at " + time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for id, h := range map[string]map[string]string{
		"replace": {queue.ScheduleTargetHeader: "fleet.schedule.keep", "Nats-Schedule-Rollup": "sub"},
		"plant":   {queue.ScheduleTargetHeader: "fleet.schedule.phantom"},
		"trigger": {queue.ScheduleTargetHeader: "fleet.job.any", "Nats-Schedule-Source": "fleet.schedule.keep"},
	} {
		m := nats.NewMsg("fleet.delay." + id)
		m.Data = []byte(`{"command":"echo"}`)
		m.Header.Set(queue.ScheduleHeader, at)
		for k, v := range h {
			m.Header.Set(k, v)
		}
		if _, err := ctopo.JS.PublishMsg(ctx, m); err != nil {
			t.Fatalf("client publish on fleet.delay.%s: %v", id, err)
		}
	}
	sharedtest.Eventually(t, 10*time.Second, func() error {
		if _, n, err := dtopo.Delayed(ctx, 0); err != nil || n != 0 {
			return fmt.Errorf("delayed jobs: %d, %v; want the strays deleted", n, err)
		}
		return nil
	})
	if m, err := dtopo.Jobs.GetLastMsgForSubject(ctx, "fleet.schedule.keep"); err != nil || m.Sequence != keep.Sequence {
		t.Fatalf("the operator's schedule keep: %+v, %v; want it as added (seq %d)", m, err, keep.Sequence)
	}
	if err := dtopo.RemoveSchedule(ctx, "keep"); err != nil {
		t.Fatalf("dispatcher RemoveSchedule: %v", err)
	}
	dispatcher.assertNoViolations(t)
	client.assertNoViolations(t)

	client.denyPublish(t, "fleet.schedule.nightly")
	agent := s.connect(t, userAgent)
	agent.denyPublish(t, "fleet.delay.x")
	agent.denyPublish(t, "fleet.schedule.x")
}
