package worker_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/worker"
)

func TestMain(m *testing.M) { sharedtest.TestMain(m) }

// config returns a Config running the helper worker with opts.
func config(t testing.TB, opts ...testworker.Option) worker.Config {
	argv, env := testworker.Command(opts...)
	return worker.Config{
		ID:             "w-" + strings.ReplaceAll(t.Name(), "/", "-"),
		Command:        argv,
		Env:            env,
		StartupTimeout: 20 * time.Second,
		StopGrace:      5 * time.Second,
		Logger:         zaptest.NewLogger(t),
	}
}

// start starts a worker from cfg and kills it when the test ends.
func start(t testing.TB, cfg worker.Config) *worker.Worker {
	t.Helper()
	w, err := worker.Start(t.Context(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(w.Kill)
	return w
}

// startHelper starts the helper worker with opts.
func startHelper(t testing.TB, opts ...testworker.Option) *worker.Worker {
	t.Helper()
	return start(t, config(t, opts...))
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// wantReason checks that err is a *worker.Error with the given reason.
func wantReason(t testing.TB, err, reason error) *worker.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("err = nil, want %v", reason)
	}
	var we *worker.Error
	if !errors.As(err, &we) {
		t.Fatalf("err = %T %v, want *worker.Error", err, err)
	}
	if !errors.Is(err, reason) {
		t.Fatalf("err = %v (reason %v), want reason %v", err, we.Reason, reason)
	}
	return we
}

// processGone reports whether pid no longer runs: it does not exist or is a
// zombie nobody reaped yet.
func processGone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	state := s[i+2]
	return state == 'Z' || state == 'X'
}

// waitGone polls until pid is gone or the deadline passes.
func waitGone(t testing.TB, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !processGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still running", pid)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not synchronisation
	}
}

// waitDone waits for w.Done with a deadline.
func waitDone(t testing.TB, w *worker.Worker) {
	t.Helper()
	select {
	case <-w.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("worker %s: Done not closed", w.ID())
	}
}
