package worker_test

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/worker"
)

// A worker without the cancel feature (the Go helper) gets no cancel frame:
// it has the grace to answer, then it is killed and Call fails with
// ErrCanceled.
func TestCallCancelKillsAfterGrace(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	if w.HasFeature("cancel") {
		t.Fatal("helper worker claims the cancel feature")
	}
	cancel := make(chan struct{})
	close(cancel)
	start := time.Now()
	_, err := w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{
		Command: "sleep", Payload: json.RawMessage(`{"ms":60000}`),
		Cancel: cancel, CancelGrace: 200 * time.Millisecond,
	})
	wantReason(t, err, worker.ErrCanceled)
	if took := time.Since(start); took < 200*time.Millisecond {
		t.Errorf("killed after %v, before the grace", took)
	}
	waitGone(t, w.PID())
}

// An answer within the grace is the call's result, flagged Canceled, and
// the worker lives on.
func TestCallCancelAnsweredWithinGrace(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	cancel := make(chan struct{})
	close(cancel)
	res, err := w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{
		Command: "sleep", Payload: json.RawMessage(`{"ms":100}`),
		Cancel: cancel, CancelGrace: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK || !res.Canceled {
		t.Fatalf("result %+v: want OK and Canceled", res)
	}
	if err := w.Validate(); err != nil {
		t.Fatalf("worker unusable after an answered cancel: %v", err)
	}
}

// A worker with the cancel feature (the Python SDK's slow example) is sent
// the cancel frame, answers with a Canceled error at once, and keeps
// serving.
func TestCallCancelFrame(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for the Python SDK: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cfg := worker.Config{ID: "py", Command: []string{python, filepath.Join(wd, "..", "examples", "slow_worker.py")}}
	w := start(t, cfg)
	if !slices.Equal(w.Features(), []string{"cancel"}) {
		t.Fatalf("features %v, want [cancel]", w.Features())
	}
	cancel := make(chan struct{})
	progressed := make(chan struct{}, 1)
	go func() {
		<-progressed
		close(cancel)
	}()
	start := time.Now()
	res, err := w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{
		Command: "slow", Payload: json.RawMessage(`{"ms":60000,"steps":600}`),
		OnProgress: func(json.RawMessage) {
			select {
			case progressed <- struct{}{}:
			default:
			}
		},
		Cancel: cancel, CancelGrace: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || !res.Canceled || res.Error == nil || res.Error.Type != "Canceled" {
		t.Fatalf("result %+v (error %+v): want a Canceled error", res, res.Error)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("cancel took %v", took)
	}
	res, err = w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{Command: "slow", Payload: json.RawMessage(`{"ms":1}`)})
	if err != nil || !res.OK {
		t.Fatalf("next call: %+v, %v", res, err)
	}
	if errors.Is(w.Validate(), worker.ErrDead) {
		t.Fatal("worker died")
	}
}
