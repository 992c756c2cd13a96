package worker_test

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
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

// sleeperWorker is a Python SDK worker whose "sleep" command reports
// progress, then sleeps in one piece: only the signal that follows the
// cancel frame can stop it before the agent's grace runs out.
const sleeperWorker = `
import sys, time
sys.path.insert(0, sys.argv[1])
import procfleet_worker as pw

@pw.handler("sleep")
def sleep(payload, session):
    session.progress("sleeping")
    time.sleep(payload)
    return "slept"

@pw.handler("deaf")
def deaf(payload, session):
    # Drops every signal for a second (as one lost just before a blocking
    # call would be), then sleeps: only a later signal can stop the sleep.
    import signal
    sdk = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    session.progress("deaf")
    time.sleep(1)
    signal.signal(signal.SIGUSR1, sdk)
    time.sleep(payload)
    return "slept"

@pw.handler("env")
def env(payload, session):
    import os
    return {k: os.environ.get(k) for k in payload}

pw.run()
`

// sleeper writes sleeperWorker to a temporary file and returns the
// command that runs it with python as the interpreter ("" for python3 from
// PATH), and python's path.
func sleeper(t *testing.T, python string) (command []string, interp string) {
	t.Helper()
	if python == "" {
		var err error
		if python, err = exec.LookPath("python3"); err != nil {
			t.Fatalf("python3 is needed for the Python SDK: %v", err)
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "sleeper.py")
	if err := os.WriteFile(script, []byte(sleeperWorker), 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{python, script, filepath.Join(wd, "python")}, python
}

// A worker with the cancel feature (the Python SDK) is sent the cancel
// frame while its handler sleeps, answers with a Canceled error at once,
// and keeps serving. The SDK reads its frames on its main thread, with the
// agent's signal after each cancel ("cancel_signal"), when the agent started
// it; on a reader thread when a shell stands between them or
// PROCFLEET_READER_THREAD is set. Each way stops the sleep.
func TestCallCancelFrame(t *testing.T) {
	t.Parallel()
	direct, python := sleeper(t, "")
	script, sdk := direct[1], direct[2]
	for _, tc := range []struct {
		name     string
		command  []string
		env      []string
		features []string
	}{
		{"main thread, signaled", direct, nil, []string{"cancel", "cancel_signal"}},
		// Not exec'd: the shell waits for python, whose parent it is.
		{"reader thread, under a shell", []string{"/bin/sh", "-c", `"$0" "$1" "$2"; exit $?`, python, script, sdk}, nil, []string{"cancel"}},
		{"reader thread, asked for", direct, []string{"PROCFLEET_READER_THREAD=1"}, []string{"cancel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := worker.Config{ID: "py", Command: tc.command}
			if tc.env != nil {
				cfg.Env = append(os.Environ(), tc.env...)
			}
			w := start(t, cfg)
			if !slices.Equal(w.Features(), tc.features) {
				t.Fatalf("features %v, want %v", w.Features(), tc.features)
			}
			cancel := make(chan struct{})
			progressed := make(chan struct{}, 1)
			go func() {
				<-progressed
				close(cancel)
			}()
			start := time.Now()
			res, err := w.Call(ctxTimeout(t, 60*time.Second), &worker.Call{
				Command: "sleep", Payload: json.RawMessage(`300`),
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
			res, err = w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{Command: "sleep", Payload: json.RawMessage(`0.001`)})
			if err != nil || !res.OK {
				t.Fatalf("next call: %+v, %v", res, err)
			}
			if errors.Is(w.Validate(), worker.ErrDead) {
				t.Fatal("worker died")
			}
		})
	}
}

// The agent's pid reaches every worker's environment, last so that it wins
// over an inherited one; without an explicit environment the worker gets
// the agent's, with PWD set to its directory, as os/exec gives it.
func TestWorkerEnvironment(t *testing.T) {
	t.Parallel()
	_, python := sleeper(t, "")
	// The interpreter itself: a shell shim (pyenv's) would set PWD anew.
	out, err := exec.Command(python, "-c", "import sys; print(sys.executable)").Output()
	if err != nil {
		t.Fatal(err)
	}
	command, _ := sleeper(t, strings.TrimSpace(string(out)))
	dir := t.TempDir()
	agent := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name string
		env  []string
		want map[string]string
	}{
		{"inherited", nil, map[string]string{"PROCFLEET_AGENT_PID": agent, "PWD": dir}},
		{"explicit", []string{"PROCFLEET_AGENT_PID=1", "PWD=/elsewhere", "PATH=" + os.Getenv("PATH")},
			map[string]string{"PROCFLEET_AGENT_PID": agent, "PWD": "/elsewhere"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := start(t, worker.Config{ID: "py", Command: command, Dir: dir, Env: tc.env})
			res, err := w.Call(ctxTimeout(t, 30*time.Second), &worker.Call{Command: "env", Payload: json.RawMessage(`["PROCFLEET_AGENT_PID","PWD"]`)})
			if err != nil || !res.OK {
				t.Fatalf("env: %+v, %v", res, err)
			}
			var got map[string]string
			if err := json.Unmarshal(res.Value, &got); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("worker environment %v, want %v", got, tc.want)
			}
		})
	}
}

// A worker with cancel_signal is signaled again every 50 ms until it
// answers: a signal that lands just before the handler enters a blocking
// call is lost (the call does not see it), and the next one stops it.
func TestCallCancelResignals(t *testing.T) {
	t.Parallel()
	command, _ := sleeper(t, "")
	w := start(t, worker.Config{ID: "py", Command: command})
	if !w.HasFeature("cancel_signal") {
		t.Fatalf("features %v: want cancel_signal", w.Features())
	}
	cancel := make(chan struct{})
	var once sync.Once
	res, err := w.Call(ctxTimeout(t, 60*time.Second), &worker.Call{
		Command: "deaf", Payload: json.RawMessage(`300`),
		OnProgress:  func(json.RawMessage) { once.Do(func() { close(cancel) }) },
		Cancel:      cancel,
		CancelGrace: 20 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK || !res.Canceled || res.Error == nil || res.Error.Type != "Canceled" {
		t.Fatalf("result %+v (error %+v): want a Canceled error", res, res.Error)
	}
}
