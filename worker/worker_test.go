package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/worker"
	"github.com/procfleet/procfleet/worker/protocol"
)

func TestStartFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		opts      []testworker.Option
		edit      func(*worker.Config)
		ctx       func(t *testing.T) context.Context
		wantCause error // checked with errors.Is when set
		wantExit  int
		wantText  string // substring of the error
	}{
		{name: "crash", opts: []testworker.Option{testworker.StartCrash}, wantExit: 1},
		{name: "garbage", opts: []testworker.Option{testworker.StartGarbage}, wantCause: protocol.ErrFrameTooLarge},
		{name: "close stdout", opts: []testworker.Option{testworker.StartCloseStdout}, wantText: "signal: killed"},
		{
			name:     "never ready",
			opts:     []testworker.Option{testworker.StartNeverReady},
			edit:     func(c *worker.Config) { c.StartupTimeout = 300 * time.Millisecond },
			wantText: "no ready frame within 300ms",
		},
		{
			name: "ctx expires",
			opts: []testworker.Option{testworker.StartNeverReady},
			ctx: func(t *testing.T) context.Context {
				return ctxTimeout(t, 300*time.Millisecond)
			},
			wantCause: context.DeadlineExceeded,
		},
		{
			name:      "no such binary",
			edit:      func(c *worker.Config) { c.Command = []string{"procfleet-no-such-binary"} },
			wantCause: exec.ErrNotFound,
		},
		{
			name:     "not a worker",
			edit:     func(c *worker.Config) { c.Command = []string{"/bin/sh", "-c", "exit 7"} },
			wantExit: 7,
		},
		{
			name: "wrong first frame",
			edit: func(c *worker.Config) {
				c.Command = []string{"/bin/sh", "-c", `printf '\000\000\000\017{"type":"pong"}'; sleep 60`}
			},
			wantText: `first frame is "pong"`,
		},
		{name: "no command", edit: func(c *worker.Config) { c.Command = nil }, wantCause: worker.ErrInvalidConfig, wantText: "Command is required"},
		{name: "negative startup timeout", edit: func(c *worker.Config) { c.StartupTimeout = -1 }, wantCause: worker.ErrInvalidConfig, wantText: "StartupTimeout cannot be negative"},
		{name: "negative stop grace", edit: func(c *worker.Config) { c.StopGrace = -1 }, wantCause: worker.ErrInvalidConfig, wantText: "StopGrace cannot be negative"},
		{name: "negative max frame", edit: func(c *worker.Config) { c.MaxFrame = -1 }, wantCause: worker.ErrInvalidConfig, wantText: "MaxFrame cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config(t, tt.opts...)
			if tt.edit != nil {
				tt.edit(&cfg)
			}
			ctx := t.Context()
			if tt.ctx != nil {
				ctx = tt.ctx(t)
			}
			begin := time.Now()
			w, err := worker.Start(ctx, cfg)
			if w != nil {
				t.Cleanup(w.Kill)
				t.Fatalf("Start returned a worker")
			}
			we := wantReason(t, err, worker.ErrStartup)
			if tt.wantCause != nil && !errors.Is(err, tt.wantCause) {
				t.Errorf("err = %v, want cause %v", err, tt.wantCause)
			}
			if tt.wantExit != 0 {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != tt.wantExit {
					t.Errorf("err = %v, want exit status %d", err, tt.wantExit)
				}
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("err = %q, want it to contain %q", err, tt.wantText)
			}
			if elapsed := time.Since(begin); elapsed > 15*time.Second {
				t.Errorf("Start took %v", elapsed)
			}
			// Start reaps before it returns, so the process is gone now.
			if we.PID > 0 && !processGone(we.PID) {
				t.Errorf("pid %d still running after Start failed", we.PID)
			}
		})
	}
}

func TestStartDelay(t *testing.T) {
	t.Parallel()
	w := startHelper(t, testworker.StartDelay(100*time.Millisecond))
	if err := w.Ping(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

func TestStopGraceful(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	if err := w.Stop(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-w.Done():
	default:
		t.Fatal("Done not closed after Stop returned")
	}
	if err := w.ExitErr(); err != nil {
		t.Fatalf("ExitErr = %v, want clean exit", err)
	}
	if !processGone(w.PID()) {
		t.Fatalf("pid %d still running", w.PID())
	}
	wantReason(t, w.Validate(), worker.ErrStopped)
	_, err := w.Call(ctxTimeout(t, time.Second), &worker.Call{Command: "echo"})
	wantReason(t, err, worker.ErrStopped)
	wantReason(t, w.SessionEnd("s"), worker.ErrStopped)
	// Stop and Kill again are no-ops.
	if err := w.Stop(t.Context()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	w.Kill()
}

func TestStopConcurrent(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := w.Stop(ctxTimeout(t, 20*time.Second)); err != nil {
				t.Errorf("Stop: %v", err)
			}
			select {
			case <-w.Done():
			default:
				t.Error("Stop returned before Done")
			}
		})
	}
	wg.Wait()
}

func TestStopEscalatesToSIGKILL(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.IgnoreTerm)
	cfg.StopGrace = 200 * time.Millisecond
	w := start(t, cfg)
	begin := time.Now()
	if err := w.Stop(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if elapsed := time.Since(begin); elapsed < 2*cfg.StopGrace {
		t.Errorf("Stop took %v, want at least two grace periods before SIGKILL", elapsed)
	}
	var ee *exec.ExitError
	if err := w.ExitErr(); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("ExitErr = %v, want killed by SIGKILL", err)
	}
	if !processGone(w.PID()) {
		t.Fatalf("pid %d still running", w.PID())
	}
}

func TestStopContextEndsGoesToSIGKILL(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.IgnoreTerm)
	cfg.StopGrace = time.Hour
	w := start(t, cfg)
	err := w.Stop(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop = %v, want context.DeadlineExceeded", err)
	}
	if !processGone(w.PID()) {
		t.Fatalf("pid %d still running", w.PID())
	}
}

func TestStopDuringCall(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	inside := make(chan struct{})
	res := make(chan error, 1)
	go func() {
		r, err := w.Call(t.Context(), &worker.Call{
			Command:    "sleep",
			Payload:    json.RawMessage(`{"ms":200}`),
			OnProgress: func(json.RawMessage) { close(inside) },
		})
		if err == nil && string(r.Value) != `{"slept":200}` {
			err = errors.New("unexpected value " + string(r.Value))
		}
		res <- err
	}()
	<-inside
	// The worker reads shutdown only after it has answered the call, so
	// the call completes and then the worker exits cleanly.
	if err := w.Stop(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := <-res; err != nil {
		t.Fatalf("Call during Stop: %v", err)
	}
	if err := w.ExitErr(); err != nil {
		t.Fatalf("ExitErr = %v", err)
	}
}

func TestKillDuringCall(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	res := make(chan error, 1)
	go func() {
		_, err := w.Call(t.Context(), &worker.Call{Command: "hang"})
		res <- err
	}()
	// Whether the call is in flight or not yet started, it fails the same.
	w.Kill()
	wantReason(t, <-res, worker.ErrStopped)
	if !processGone(w.PID()) {
		t.Fatalf("pid %d still running", w.PID())
	}
}

func TestValidateAfterSIGKILL(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	if err := w.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDone(t, w)
	wantReason(t, w.Validate(), worker.ErrDead)
	var ee *exec.ExitError
	if err := w.ExitErr(); !errors.As(err, &ee) {
		t.Fatalf("ExitErr = %v, want *exec.ExitError", err)
	}
}

func TestStderrReachesLogger(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.InfoLevel)
	cfg := config(t)
	cfg.Logger = zap.New(core)
	w := start(t, cfg)
	const line = "hello from the worker's stderr"
	if _, err := w.Call(ctxTimeout(t, 10*time.Second), &worker.Call{Command: "log", Payload: json.RawMessage(`"` + line + `"`)}); err != nil {
		t.Fatalf("Call: %v", err)
	}
	// stderr is a separate pipe, so the line may trail the reply: poll.
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessage(line).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stderr line never logged; got %v", logs.All())
		}
		time.Sleep(5 * time.Millisecond) // polling interval
	}
	e := logs.FilterMessage(line).All()[0]
	fields := e.ContextMap()
	if fields["worker"] != w.ID() || fields["pid"] != int64(w.PID()) {
		t.Fatalf("log fields = %v, want worker %s pid %d", fields, w.ID(), w.PID())
	}
}

func TestGrandchildrenDieWithGroup(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	res, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "spawn"})
	if err != nil || !res.OK {
		t.Fatalf("spawn = %+v, %v", res, err)
	}
	var child struct{ PID int }
	if err := json.Unmarshal(res.Value, &child); err != nil || child.PID <= 0 {
		t.Fatalf("spawn value %s: %v", res.Value, err)
	}
	if processGone(child.PID) {
		t.Fatalf("grandchild %d not running", child.PID)
	}
	w.Kill()
	waitGone(t, child.PID)
}

func TestGrandchildrenDieWhenLeaderExits(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	res, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "spawn"})
	if err != nil || !res.OK {
		t.Fatalf("spawn = %+v, %v", res, err)
	}
	var child struct{ PID int }
	if err := json.Unmarshal(res.Value, &child); err != nil {
		t.Fatal(err)
	}
	// The leader exits on its own; its descendants must not outlive it.
	_, err = w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "exit0"})
	wantReason(t, err, worker.ErrDead)
	waitDone(t, w)
	waitGone(t, child.PID)
}
