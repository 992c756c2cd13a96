package queue_test

import (
	"context"
	"errors"
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

// TestCanceledDelayedJobIsOnlyItsOwnResult: the outcome a delayed job gets
// when it is canceled before it was due answers the sequence its
// submission got back (the delay message's), and no other. It had no job
// sequence, and a result without one matched every sequence: a new job
// reusing the id was answered at once, while it still waited, with the old
// job's "canceled before it was due".
func TestCanceledDelayedJobIsOnlyItsOwnResult(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Schedules: true})
	ctx := testCtx(t)
	delayed, err := b.topo.SubmitAt(ctx, "s1", &queue.Job{ID: "rr1", Command: "echo"}, time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if dropped, err := b.topo.CancelDelayed(ctx, "rr1"); err != nil || !dropped {
		t.Fatalf("CancelDelayed = %v, %v; want the waiting job dropped", dropped, err)
	}
	// A new job under the id, published without Nats-Msg-Id (as after the
	// jobs dedup window); no agent runs it.
	later, err := b.js.Publish(ctx, b.cfg.AnySubject(), []byte(`{"id":"rr1","command":"echo"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := b.topo.GetJobResult(ctx, "rr1", later.Sequence); !errors.Is(err, queue.ErrResultNotFound) {
		t.Fatalf("the waiting job at seq %d answered with %+v, %v; want ErrResultNotFound", later.Sequence, r, err)
	}
	isCancel := func(r *queue.Result) bool {
		return r != nil && !r.OK && r.Error != nil && r.Error.Kind == queue.KindCanceled && r.JobSeq == delayed.Sequence
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if r, err := b.topo.WaitJobResult(wctx, b.nc, "rr1", delayed.Sequence); err != nil || !isCancel(r) {
		t.Fatalf("WaitJobResult(the delayed submit's seq %d) = %+v, %v; want its canceled result", delayed.Sequence, r, err)
	}
	// The later job's own result answers its sequence; the canceled one
	// still answers the delayed submit's.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "rr1", JobSeq: later.Sequence, Queue: queue.DefaultQueue, OK: true}); err != nil {
		t.Fatal(err)
	}
	if r, err := b.topo.WaitJobResult(wctx, b.nc, "rr1", later.Sequence); err != nil || !r.OK || r.JobSeq != later.Sequence {
		t.Fatalf("WaitJobResult(seq %d) = %+v, %v; want the later job's result", later.Sequence, r, err)
	}
	if r, err := b.topo.GetJobResult(ctx, "rr1", delayed.Sequence); err != nil || !isCancel(r) {
		t.Fatalf("GetJobResult(seq %d) = %+v, %v; want the canceled result", delayed.Sequence, r, err)
	}

	// A result without a job sequence (an older version's) is the id's
	// latest, but no particular job's.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "noseq", OK: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.topo.GetResult(ctx, "noseq"); err != nil {
		t.Fatalf("GetResult(noseq): %v", err)
	}
	if r, err := b.topo.GetJobResult(ctx, "noseq", 7); !errors.Is(err, queue.ErrResultNotFound) {
		t.Fatalf("GetJobResult(noseq, 7) = %+v, %v; want ErrResultNotFound", r, err)
	}
}
