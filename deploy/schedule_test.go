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
// delayed jobs but adds no periodic schedule; the dispatcher adds, lists
// and removes schedules; an agent publishes neither.
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
	dispatcher.assertNoViolations(t)
	client.assertNoViolations(t)

	client.denyPublish(t, "fleet.schedule.nightly")
	agent := s.connect(t, userAgent)
	agent.denyPublish(t, "fleet.delay.x")
	agent.denyPublish(t, "fleet.schedule.x")
}
