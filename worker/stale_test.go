package worker_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/procfleet/procfleet/worker"
)

// TestLateProgressIsDropped: progress frames for a call that has answered (a
// thread of the worker's handler that outlived its call) arrive while the
// next call or ping waits, or while nothing is pending. They are dropped and
// logged once per call; the next request, innocent of them, succeeds and
// the worker stays usable.
func TestLateProgressIsDropped(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	core, logs := observer.New(zap.DebugLevel)
	cfg.Logger = zap.New(zapcore.NewTee(cfg.Logger.Core(), core))
	w := start(t, cfg)
	ctx := ctxTimeout(t, 20*time.Second)
	call := func(command string) {
		t.Helper()
		var got []string
		_, err := w.Call(ctx, &worker.Call{
			Command:    command,
			Payload:    json.RawMessage(`{}`),
			OnProgress: func(data json.RawMessage) { got = append(got, string(data)) },
		})
		if err != nil {
			t.Fatalf("Call %s: %v", command, err)
		}
		if len(got) != 0 {
			t.Fatalf("Call %s: progress %v, want none: it is the previous call's", command, got)
		}
	}
	call("late_progress")               // id 1
	call("echo")                        // id 2: call 1's three late frames come while it waits
	call("late_progress")               // id 3
	if err := w.Ping(ctx); err != nil { // id 4: likewise
		t.Fatalf("Ping: %v", err)
	}
	call("late_progress")                      // id 5
	if err := w.SessionEnd("s1"); err != nil { // no reply: nothing pending
		t.Fatalf("SessionEnd: %v", err)
	}
	dropped := func() int { return logs.FilterMessageSnippet("ended request").Len() }
	for deadline := time.Now().Add(10 * time.Second); dropped() < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("call 5's late frames were not dropped while nothing was pending: %v", logs.All())
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
	call("echo")
	if err := w.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if n := dropped(); n != 3 {
		t.Errorf("%d log lines about dropped progress, want 3 (one per call, for 9 frames): %v", n, logs.All())
	}
}

// TestLateResultIsProtocolError: a second result for a call that has
// answered is a protocol error, unlike a late progress frame.
func TestLateResultIsProtocolError(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	ctx := ctxTimeout(t, 20*time.Second)
	if _, err := w.Call(ctx, &worker.Call{Command: "late_result"}); err != nil {
		t.Fatalf("Call late_result: %v", err)
	}
	_, err := w.Call(ctx, &worker.Call{Command: "echo"})
	wantReason(t, err, worker.ErrProtocol)
	if !strings.Contains(err.Error(), "result frame with id 1") {
		t.Fatalf("err = %v, want it to name the second result of call 1", err)
	}
	waitDone(t, w)
}
