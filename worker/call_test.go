package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/worker"
	"github.com/procfleet/procfleet/worker/protocol"
)

func TestCallEcho(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	if w.PID() <= 0 || w.StartedAt().IsZero() || w.ID() == "" {
		t.Fatalf("PID %d StartedAt %v ID %q", w.PID(), w.StartedAt(), w.ID())
	}
	if !slices.Contains(w.Commands(), "echo") {
		t.Fatalf("Commands() = %v, want echo among them", w.Commands())
	}
	ctx := ctxTimeout(t, 10*time.Second)
	for i := range 3 {
		payload := json.RawMessage(`{"n":` + string(rune('0'+i)) + `,"s":"<&>"}`)
		res, err := w.Call(ctx, &worker.Call{Command: "echo", Payload: payload, JobID: "j1", Attempt: 1})
		if err != nil {
			t.Fatalf("Call: %v", err)
		}
		if !res.OK || string(res.Value) != string(payload) {
			t.Fatalf("Call = %+v, want OK with %s", res, payload)
		}
	}
	if err := w.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestCallNilPayloadIsNull(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	res, err := w.Call(ctxTimeout(t, 10*time.Second), &worker.Call{Command: "echo"})
	if err != nil {
		t.Fatalf("Call: %v", err)
	}
	if string(res.Value) != "null" {
		t.Fatalf("Value = %s, want null", res.Value)
	}
}

func TestCallApplicationErrorKeepsWorker(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	ctx := ctxTimeout(t, 10*time.Second)
	tests := []struct {
		command string
		want    protocol.ErrorInfo
	}{
		{"fail", protocol.ErrorInfo{Type: "ValueError", Message: "boom"}},
		{"retry", protocol.ErrorInfo{Type: "TransientError", Message: "try again", Retryable: true}},
		{"nope", protocol.ErrorInfo{Type: "UnknownCommand", Message: "unknown command: nope"}},
	}
	for _, tt := range tests {
		res, err := w.Call(ctx, &worker.Call{Command: tt.command})
		if err != nil {
			t.Fatalf("%s: Call: %v", tt.command, err)
		}
		if res.OK || res.Error == nil || *res.Error != tt.want {
			t.Fatalf("%s: Call = %+v (error %+v), want error %+v", tt.command, res, res.Error, tt.want)
		}
		if err := w.Validate(); err != nil {
			t.Fatalf("%s: Validate: %v", tt.command, err)
		}
	}
	res, err := w.Call(ctx, &worker.Call{Command: "echo", Payload: json.RawMessage(`"still here"`)})
	if err != nil || !res.OK || string(res.Value) != `"still here"` {
		t.Fatalf("echo after app errors = %+v, %v", res, err)
	}
}

// TestCallWorkerFailure covers every way a worker can break mid-call: the
// call fails with the right reason, the process is gone, and the worker
// stays unusable.
func TestCallWorkerFailure(t *testing.T) {
	t.Parallel()
	tests := []struct {
		command    string
		wantReason error
		wantCause  error // optional, checked with errors.Is
		wantExit   int   // optional exit status, checked with errors.As
	}{
		{command: "crash", wantReason: worker.ErrDead, wantExit: 3},
		{command: "exit0", wantReason: worker.ErrDead},
		{command: "half", wantReason: worker.ErrDead, wantExit: 1},
		{command: "close_stdout", wantReason: worker.ErrDead},
		{command: "garbage", wantReason: worker.ErrProtocol, wantCause: protocol.ErrNotJSON},
		{command: "oversized", wantReason: worker.ErrProtocol, wantCause: protocol.ErrFrameTooLarge},
		{command: "zero", wantReason: worker.ErrProtocol, wantCause: protocol.ErrEmptyFrame},
		{command: "badid", wantReason: worker.ErrProtocol, wantCause: protocol.ErrProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			t.Parallel()
			w := startHelper(t)
			pid := w.PID()
			_, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: tt.command, Payload: json.RawMessage(`{}`)})
			we := wantReason(t, err, tt.wantReason)
			if we.PID != pid || we.WorkerID != w.ID() {
				t.Errorf("error names worker %s pid %d, want %s pid %d", we.WorkerID, we.PID, w.ID(), pid)
			}
			if tt.wantCause != nil && !errors.Is(err, tt.wantCause) {
				t.Errorf("err = %v, want cause %v", err, tt.wantCause)
			}
			if errors.Is(err, worker.ErrUnread) {
				t.Errorf("err = %v: the worker read the call, yet the error says it did not", err)
			}
			if tt.wantExit != 0 {
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != tt.wantExit {
					t.Errorf("err = %v, want exit status %d", err, tt.wantExit)
				}
			}
			waitDone(t, w)
			waitGone(t, pid)
			wantReason(t, w.Validate(), tt.wantReason)
			_, err = w.Call(ctxTimeout(t, 10*time.Second), &worker.Call{Command: "echo"})
			wantReason(t, err, tt.wantReason)
			wantReason(t, w.Ping(ctxTimeout(t, 10*time.Second)), tt.wantReason)
			wantReason(t, w.SessionEnd("s1"), tt.wantReason)
		})
	}
}

// TestCallUnreadByDeadWorker: a worker that dies without reading the call
// (here it exits right after its ready frame) fails the call with ErrDead
// and ErrUnread in its cause: the job never reached it.
func TestCallUnreadByDeadWorker(t *testing.T) {
	t.Parallel()
	for range 5 {
		w := startHelper(t, testworker.StartReadyExit)
		_, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "echo", Payload: json.RawMessage(`{"x":1}`)})
		wantReason(t, err, worker.ErrDead)
		if !errors.Is(err, worker.ErrUnread) {
			t.Fatalf("err = %v, want ErrUnread in its cause", err)
		}
	}
}

// TestCallPartlyReadIsNotUnread: a worker that read part of a call larger
// than the pipe and then died did read the call (a job that kills it while
// it reads a huge payload is to blame), so the failure is not ErrUnread,
// although the call's own write failed half way.
func TestCallPartlyReadIsNotUnread(t *testing.T) {
	t.Parallel()
	body := []byte(`{"type":"ready","protocol":1,"pid":1,"commands":["x"]}`)
	ready := filepath.Join(t.TempDir(), "ready.bin")
	if err := os.WriteFile(ready, protocol.AppendFrame(nil, body), 0o600); err != nil {
		t.Fatal(err)
	}
	// Reads 100 000 bytes of the call (more than a pipe holds), then dies.
	w := start(t, worker.Config{ID: "partial", Command: []string{"sh", "-c", "cat \"$0\"; head -c 100000 >/dev/null; exit 3", ready}})
	payload, _ := json.Marshal(strings.Repeat("x", 1<<20))
	_, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "x", Payload: payload})
	wantReason(t, err, worker.ErrDead)
	if errors.Is(err, worker.ErrUnread) {
		t.Errorf("the worker read 100000 bytes of the call, yet the error says it never read it: %v", err)
	}
}

func TestCallContextEnds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		call       func(t *testing.T) (context.Context, *worker.Call)
		wantReason error
		wantCause  error
	}{
		{
			name: "ctx deadline",
			call: func(t *testing.T) (context.Context, *worker.Call) {
				return ctxTimeout(t, 200*time.Millisecond), &worker.Call{Command: "hang"}
			},
			wantReason: worker.ErrTimeout,
			wantCause:  context.DeadlineExceeded,
		},
		{
			name: "Call.Deadline",
			call: func(t *testing.T) (context.Context, *worker.Call) {
				return t.Context(), &worker.Call{Command: "hang", Deadline: time.Now().Add(200 * time.Millisecond)}
			},
			wantReason: worker.ErrTimeout,
			wantCause:  context.DeadlineExceeded,
		},
		{
			name: "ctx canceled",
			call: func(t *testing.T) (context.Context, *worker.Call) {
				ctx, cancel := context.WithCancel(t.Context())
				t.Cleanup(cancel)
				// Cancel halfway, once the worker is provably inside the
				// call and a second before its reply.
				return ctx, &worker.Call{
					Command:    "sleep",
					Payload:    json.RawMessage(`{"ms":2000}`),
					OnProgress: func(json.RawMessage) { cancel() },
				}
			},
			wantReason: worker.ErrCanceled,
			wantCause:  context.Canceled,
		},
		{
			name: "ctx already expired",
			call: func(t *testing.T) (context.Context, *worker.Call) {
				ctx, cancel := context.WithCancel(t.Context())
				cancel()
				return ctx, &worker.Call{Command: "echo"}
			},
			wantReason: worker.ErrCanceled,
			wantCause:  context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := startHelper(t)
			ctx, c := tt.call(t)
			_, err := w.Call(ctx, c)
			wantReason(t, err, tt.wantReason)
			if !errors.Is(err, tt.wantCause) {
				t.Fatalf("err = %v, want cause %v", err, tt.wantCause)
			}
			waitGone(t, w.PID())
			waitDone(t, w)
			wantReason(t, w.Validate(), tt.wantReason)
		})
	}
}

func TestCallWithDeadlineSucceeds(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	res, err := w.Call(ctxTimeout(t, time.Minute), &worker.Call{
		Command: "echo", Payload: json.RawMessage(`1`), Deadline: time.Now().Add(30 * time.Second),
	})
	if err != nil || string(res.Value) != "1" {
		t.Fatalf("Call = %+v, %v", res, err)
	}
	if err := w.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestCallProgress(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	var got []string
	res, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{
		Command:    "sleep",
		Payload:    json.RawMessage(`{"ms":20}`),
		OnProgress: func(data json.RawMessage) { got = append(got, string(data)) },
	})
	if err != nil {
		t.Fatalf("Call: %v", err)
	}
	if string(res.Value) != `{"slept":20}` {
		t.Fatalf("Value = %s", res.Value)
	}
	// Progress precedes the result on the stream, so it has been delivered
	// by the time Call returns.
	if !slices.Equal(got, []string{`{"pct":50}`}) {
		t.Fatalf("progress = %v", got)
	}
}

func TestCallsSerialize(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	ctx := ctxTimeout(t, 30*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			p := json.RawMessage(`[` + string(rune('0'+i)) + `]`)
			res, err := w.Call(ctx, &worker.Call{Command: "echo", Payload: p})
			if err == nil && string(res.Value) != string(p) {
				err = errors.New("got " + string(res.Value) + " want " + string(p))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestCallWaitingForSlotTimesOut pins the contract that any Call error means
// the worker is dead, even for a caller that never got to run.
func TestCallWaitingForSlotTimesOut(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	first := make(chan error, 1)
	inside := make(chan struct{})
	go func() {
		_, err := w.Call(t.Context(), &worker.Call{
			Command:    "sleep",
			Payload:    json.RawMessage(`{"ms":4000}`),
			OnProgress: func(json.RawMessage) { close(inside) },
		})
		first <- err
	}()
	<-inside // the first call holds the worker for another 2 s
	_, err := w.Call(ctxTimeout(t, 200*time.Millisecond), &worker.Call{Command: "echo"})
	wantReason(t, err, worker.ErrTimeout)
	wantReason(t, <-first, worker.ErrTimeout)
	waitDone(t, w)
}

func TestCallInvalidRequestKillsWorker(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		payload json.RawMessage
		cause   error
	}{
		{name: "invalid json", payload: json.RawMessage(`{"a":`)},
		{name: "over MaxFrame", payload: json.RawMessage(`"` + strings.Repeat("x", 4096) + `"`), cause: protocol.ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config(t)
			cfg.MaxFrame = 1024
			w := start(t, cfg)
			_, err := w.Call(ctxTimeout(t, 10*time.Second), &worker.Call{Command: "echo", Payload: tt.payload})
			wantReason(t, err, worker.ErrProtocol)
			if tt.cause != nil && !errors.Is(err, tt.cause) {
				t.Fatalf("err = %v, want cause %v", err, tt.cause)
			}
			waitDone(t, w)
			waitGone(t, w.PID())
		})
	}
}

// TestCallRaceWithDeath kills the process and calls at once, without
// waiting for the worker to notice: the call must fail with a typed error
// and never hang.
func TestCallRaceWithDeath(t *testing.T) {
	t.Parallel()
	for i := range 20 {
		w := startHelper(t)
		if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var err error
		if i%2 == 0 {
			_, err = w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "echo", Payload: json.RawMessage(`{}`)})
		} else {
			err = w.Validate()
			if err == nil {
				_, err = w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "echo"})
			}
		}
		wantReason(t, err, worker.ErrDead)
		waitDone(t, w)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	for range 3 {
		if err := w.Ping(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatalf("Ping: %v", err)
		}
	}
	res, err := w.Call(ctxTimeout(t, 10*time.Second), &worker.Call{Command: "echo", Payload: json.RawMessage(`2`)})
	if err != nil || string(res.Value) != "2" {
		t.Fatalf("Call after Ping = %+v, %v", res, err)
	}
}

func TestSessionEnd(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	ctx := ctxTimeout(t, 10*time.Second)
	type sessionResult struct {
		PID        int    `json:"pid"`
		Session    string `json:"session"`
		NewSession bool   `json:"new_session"`
		Count      int    `json:"count"`
	}
	for i, s := range []string{"s1", "s2", "s1"} {
		res, err := w.Call(ctx, &worker.Call{Command: "session", Session: s, NewSession: i < 2})
		if err != nil {
			t.Fatalf("session %s: %v", s, err)
		}
		var got sessionResult
		if err := json.Unmarshal(res.Value, &got); err != nil {
			t.Fatal(err)
		}
		want := sessionResult{PID: w.PID(), Session: s, NewSession: i < 2, Count: 1}
		if i == 2 {
			want.Count = 2
		}
		if got != want {
			t.Fatalf("session %s = %+v, want %+v", s, got, want)
		}
	}
	if err := w.SessionEnd("s1"); err != nil {
		t.Fatalf("SessionEnd: %v", err)
	}
	res, err := w.Call(ctx, &worker.Call{Command: "sessions"})
	if err != nil {
		t.Fatalf("sessions: %v", err)
	}
	var got struct {
		Live  []string `json:"live"`
		Ended []string `json:"ended"`
	}
	if err := json.Unmarshal(res.Value, &got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Live, []string{"s2"}) || !slices.Equal(got.Ended, []string{"s1"}) {
		t.Fatalf("sessions = %+v, want live [s2] ended [s1]", got)
	}
}

func TestRSS(t *testing.T) {
	t.Parallel()
	w := startHelper(t)
	before, err := w.RSS()
	if err != nil || before <= 0 {
		t.Fatalf("RSS = %d, %v", before, err)
	}
	if _, err := w.Call(ctxTimeout(t, 20*time.Second), &worker.Call{Command: "grow", Payload: json.RawMessage(`{"mb":32}`)}); err != nil {
		t.Fatalf("grow: %v", err)
	}
	after, err := w.RSS()
	if err != nil {
		t.Fatalf("RSS: %v", err)
	}
	if after-before < 24<<20 {
		t.Fatalf("RSS grew from %d to %d, want at least 24 MiB more", before, after)
	}
	w.Kill()
	wantReason(t, func() error { _, err := w.RSS(); return err }(), worker.ErrDead)
}

// TestCallBlockedWrite uses a worker that never reads its stdin, so a large
// request fills the pipe and the write blocks: ctx must still end the call.
func TestCallBlockedWrite(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		ctx        func(t *testing.T) context.Context
		wantReason error
	}{
		{"deadline", func(t *testing.T) context.Context { return ctxTimeout(t, 300*time.Millisecond) }, worker.ErrTimeout},
		{"cancel", func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			// Any moment works: before, during or after the write the
			// outcome is the same.
			tm := time.AfterFunc(300*time.Millisecond, cancel)
			t.Cleanup(func() { tm.Stop(); cancel() })
			return ctx
		}, worker.ErrCanceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := config(t)
			// A ready frame of 29 bytes, then never read stdin.
			cfg.Command = []string{"/bin/sh", "-c", `printf '\000\000\000\035{"type":"ready","protocol":1}'; exec sleep 600`}
			cfg.Env = nil
			w := start(t, cfg)
			payload := json.RawMessage(`"` + strings.Repeat("x", 4<<20) + `"`)
			_, err := w.Call(tt.ctx(t), &worker.Call{Command: "echo", Payload: payload})
			wantReason(t, err, tt.wantReason)
			waitDone(t, w)
			waitGone(t, w.PID())
		})
	}
}
