package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

func TestSubmitDedup(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)

	j := &queue.Job{Command: "echo", Payload: json.RawMessage(`{"n":1}`)}
	ack, err := b.topo.Submit(ctx, "s1", j)
	if err != nil {
		t.Fatal(err)
	}
	if !queue.ValidToken(j.ID) || j.Session != "s1" || ack.Duplicate {
		t.Fatalf("first submit: id %q session %q dup %v", j.ID, j.Session, ack.Duplicate)
	}
	again := &queue.Job{ID: j.ID, Command: "echo", Payload: json.RawMessage(`{"n":2}`)}
	ack2, err := b.topo.Submit(ctx, "s1", again)
	if err != nil {
		t.Fatal(err)
	}
	if !ack2.Duplicate || ack2.Sequence != ack.Sequence {
		t.Errorf("resubmit not deduplicated: %+v", ack2)
	}
	f, err := b.topo.SubmitAsync("s1", &queue.Job{ID: j.ID, Command: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-f.Ok():
		if !a.Duplicate {
			t.Errorf("async resubmit not deduplicated: %+v", a)
		}
	case err := <-f.Err():
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	info, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("%d jobs stored, want 1", info.State.Msgs)
	}
	m, err := b.topo.Jobs.GetMsg(ctx, ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := queue.ParseJob(m.Subject, m.Header, m.Data, m.Sequence, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.ID != j.ID || parsed.Session != "s1" || string(parsed.Payload) != `{"n":1}` {
		t.Errorf("stored job %+v", parsed)
	}

	// Invalid input publishes nothing and leaves the job as it was.
	bad := []struct {
		session string
		job     *queue.Job
	}{
		{"has.dot", &queue.Job{Command: "c"}},
		{"s1", &queue.Job{}},
		{"s1", &queue.Job{Command: "c", MaxAttempts: 50}},
		{"", nil},
	}
	for _, tt := range bad {
		_, err := b.topo.Submit(ctx, tt.session, tt.job)
		if !errors.Is(err, queue.ErrBadRequest) {
			t.Errorf("Submit(%q, %+v) = %v, want ErrBadRequest", tt.session, tt.job, err)
		}
		if tt.job != nil && tt.job.ID != "" {
			t.Errorf("rejected job got an id %q", tt.job.ID)
		}
	}
}

func TestStoreResultDedup(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)

	if _, err := b.topo.GetResult(ctx, "nope"); !errors.Is(err, queue.ErrResultNotFound) {
		t.Fatalf("GetResult of unknown id: %v, want ErrResultNotFound", err)
	}
	first := &queue.Result{ID: "j1", OK: true, Result: json.RawMessage(`{"v":1}`), Session: "s", Attempt: 1,
		FinishedAt: time.Now().UTC().Truncate(time.Millisecond)}
	if err := b.topo.StoreResult(ctx, first); err != nil {
		t.Fatal(err)
	}
	// A re-run after a crash stores again: dropped, and not an error.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "j1", OK: true, Result: json.RawMessage(`{"v":2}`), Attempt: 2}); err != nil {
		t.Fatal(err)
	}
	f, err := b.topo.StoreResultAsync(&queue.Result{ID: "j1", OK: false, Error: &queue.ErrorInfo{Kind: queue.KindApp, Message: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-f.Ok():
		if !a.Duplicate {
			t.Errorf("async duplicate result stored: %+v", a)
		}
	case err := <-f.Err():
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	got, err := b.topo.GetResult(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Result) != `{"v":1}` || got.Attempt != 1 || !got.FinishedAt.Equal(first.FinishedAt) {
		t.Errorf("GetResult = %+v, want the first result", got)
	}
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "bad id"}); err == nil {
		t.Error("StoreResult with an invalid id succeeded")
	}
	info, err := b.topo.Results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("%d results stored, want 1", info.State.Msgs)
	}
}

func TestWaitResult(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{})
	ctx := testCtx(t)

	// Already stored: returned at once.
	if err := b.topo.StoreResult(ctx, &queue.Result{ID: "done", OK: true}); err != nil {
		t.Fatal(err)
	}
	r, err := b.topo.WaitResult(ctx, b.nc, "done")
	if err != nil || r.ID != "done" || !r.OK {
		t.Fatalf("WaitResult(done) = %+v, %v", r, err)
	}

	// Stored while waiting, from another connection, racing the subscribe.
	_, js2 := connect(t, b.url)
	other, err := queue.Open(ctx, js2, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		id := "race-" + string(rune('a'+i))
		got := make(chan error, 1)
		go func() {
			r, err := b.topo.WaitResult(ctx, b.nc, id)
			if err == nil && r.ID != id {
				err = errors.New("wrong result " + r.ID)
			}
			got <- err
		}()
		if err := other.StoreResult(ctx, &queue.Result{ID: id, OK: true}); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("WaitResult(%s): %v", id, err)
		}
	}

	// Nothing comes: the context decides.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := b.topo.WaitResult(short, b.nc, "never"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitResult(never) = %v, want DeadlineExceeded", err)
	}
}
