package dispatcher_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestQueueStatusSkipsSchedules: delayed jobs and periodic schedules live in
// the jobs stream but are no jobs waiting: a queue holding only those shows
// none waiting and no oldest job (in status and the metrics; an oldest age
// that grew for ever with a periodic schedule fired any alert on it), and
// with a job behind them its oldest is that job, in the default queue and a
// named one.
func TestQueueStatusSkipsSchedules(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatcher.EnsureClient(ctx, nc, queue.Config{Schedules: true, Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	gpu, err := c.Queue(ctx, "gpu")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddSchedule(ctx, &queue.Schedule{Name: "nightly", Cron: "0 2 * * *", Job: &queue.Job{Command: "slow"}}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitIn(ctx, "u1", &queue.Job{ID: "later", Command: "echo"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := gpu.SubmitAt(ctx, "", &queue.Job{ID: "gpu-later", Command: "embed"}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	byName := func() map[string]dispatcher.QueueStatus {
		t.Helper()
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]dispatcher.QueueStatus{}
		for _, q := range st.Queues {
			out[q.Name] = q
		}
		if len(out) != 2 {
			t.Fatalf("queues %+v, want default and gpu", st.Queues)
		}
		return out
	}
	for name, q := range byName() {
		if q.Waiting != 0 || !q.OldestWaiting.IsZero() {
			t.Errorf("queue %s with schedules only: waiting %d, oldest %v; want none", name, q.Waiting, q.OldestWaiting)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Metrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if n := mf.GetName(); n != "procfleet_queue_jobs" && n != "procfleet_queue_oldest_job_age_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetGauge().GetValue(); v != 0 {
				t.Errorf("%s%v = %v, want 0", mf.GetName(), m.GetLabel(), v)
			}
		}
	}

	// A job stored after the schedules is the oldest one.
	before := time.Now()
	if _, err := c.Submit(ctx, "u1", &queue.Job{ID: "now", Command: "echo"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.SubmitTo(ctx, "gpu", "", &queue.Job{ID: "gpu-now", Command: "embed"}); err != nil {
		t.Fatal(err)
	}
	// The consumers count a stored job a moment after its PubAck.
	fleettest.Eventually(t, 10*time.Second, func() error {
		for name, q := range byName() {
			if q.Waiting != 1 || q.OldestWaiting.Before(before) {
				return fmt.Errorf("queue %s with one job behind its schedules: waiting %d, oldest %v; want 1, not before %v", name, q.Waiting, q.OldestWaiting, before)
			}
		}
		return nil
	})
}
