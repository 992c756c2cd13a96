package queue_test

import (
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// TestResultKeysNeverCollide: a result's dedup key (its Nats-Msg-Id) names
// its job and no other. With '-' between id, queue and sequence two jobs
// could share one: a delayed "col-29" canceled before it was due (no
// sequence) and "col" at sequence 29; "rep-q" at 31 on the default queue
// and "rep" at 31 on queue q. The second result was dropped as a duplicate
// while its job was acked, leaving the job without a stored outcome.
func TestResultKeysNeverCollide(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Schedules: true})
	ctx := testCtx(t)
	if _, err := b.topo.SubmitAt(ctx, "s1", &queue.Job{ID: "col-29", Command: "echo"}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if dropped, err := b.topo.CancelDelayed(ctx, "col-29"); err != nil || !dropped {
		t.Fatalf("CancelDelayed = %v, %v; want the waiting job dropped", dropped, err)
	}
	for _, r := range []*queue.Result{
		{ID: "col", JobSeq: 29, Queue: queue.DefaultQueue, OK: true},
		{ID: "rep-q", JobSeq: 31, Queue: queue.DefaultQueue, OK: true},
		{ID: "rep", JobSeq: 31, Queue: "q", OK: true},
	} {
		if err := b.topo.StoreResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct{ id, queue string }{
		{"col-29", queue.DefaultQueue}, {"col", queue.DefaultQueue}, {"rep-q", queue.DefaultQueue}, {"rep", "q"},
	} {
		r, err := b.topo.GetResult(ctx, tt.id)
		if err != nil {
			t.Errorf("job %s has no stored outcome: %v", tt.id, err)
			continue
		}
		if r.ID != tt.id || queue.NameOrDefault(r.Queue) != tt.queue {
			t.Errorf("result of job %s: %+v, want queue %s", tt.id, r, tt.queue)
		}
	}
	// The same job's result again is still a duplicate.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "rep", JobSeq: 31, Queue: "q", OK: false}); err != nil {
		t.Fatal(err)
	}
	info, err := b.topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 4 {
		t.Errorf("%d results stored, want 4 (one per job)", info.State.Msgs)
	}
}
