package pool_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

// exited reports whether the kernel shows pid as exited: gone (reaped), or
// a zombie whose every thread has ended. A multi-threaded process whose
// leader shows as a zombie while its other threads still exit is not dead
// yet to waitid, so it does not count.
func exited(pid int) bool {
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return true
	}
	if s := b[i+2]; s != 'Z' && s != 'X' {
		return false
	}
	tasks, err := os.ReadDir(dir + "/task")
	return err != nil || len(tasks) <= 1
}

// TestCheckoutSeesFreshDeath: a worker that died a moment ago, before
// anything in the pool noticed, is not handed out: the checkout asks the
// kernel, removes the worker and reports it dead.
//
// To hold the moment open, each worker is started through sh, which first
// leaves a process in a session of its own that keeps the worker's stdout
// and stderr open, then becomes the worker. Once the worker dies its pipes
// therefore stay open: its reader sees no EOF, and the pool hears of the
// death only after the worker package's pipe-drain grace (1 s). Only the
// kernel knows sooner.
func TestCheckoutSeesFreshDeath(t *testing.T) {
	t.Parallel()
	holders := filepath.Join(t.TempDir(), "holders")
	t.Cleanup(func() {
		b, _ := os.ReadFile(holders)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	cfg := config(t)
	cfg.Worker.Command = append([]string{"sh", "-c",
		`setsid sleep 120 </dev/null & echo $! >>"$PROCFLEET_TEST_HOLDERS"; exec "$@"`, "sh"},
		cfg.Worker.Command...)
	cfg.Worker.Env = append(cfg.Worker.Env, "PROCFLEET_TEST_HOLDERS="+holders)
	cfg.HealthInterval = -1 // only the checkout may notice
	p := startPool(t, cfg)
	ctx := testCtx(t)

	// A loaded machine may let the pool notice first (after the grace);
	// such a round proves nothing and is tried again.
	for round := 1; ; round++ {
		l, err := p.Checkout(ctx, pool.Request{})
		if err != nil {
			t.Fatal(err)
		}
		w := l.Worker()
		pid := l.PID()
		l.Release()
		killed := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Wait until the kernel shows the death: a zombie, or reaped.
		waitFor(t, "the killed worker to exit", func() bool { return exited(pid) })
		select {
		case <-w.Done():
			if round == 3 {
				t.Fatalf("the worker's death was noticed before the checkout %d times; the test proves nothing", round)
			}
			t.Logf("round %d: the worker's death was noticed %s after the kill, before the checkout; again", round, time.Since(killed))
			mustDo(t, p, pool.Request{}, "pid", nil)
			continue
		default:
		}
		l, err = p.Checkout(ctx, pool.Request{})
		took := time.Since(killed)
		if err == nil {
			l.Release()
			t.Fatalf("round %d: the pool handed out worker %d %s after it was SIGKILLed (now pid %d)", round, pid, took, l.PID())
		}
		ce := wantCheckoutErr(t, err, pool.ErrWorkerDead)
		if ce.PID != pid || !errors.Is(err, worker.ErrDead) {
			t.Fatalf("error %v: want pid %d and a worker.ErrDead cause", err, pid)
		}
		if strings.Contains(err.Error(), "process has exited") {
			t.Logf("round %d: checkout %s after the SIGKILL found worker %d dead: %v", round, took.Round(time.Microsecond), pid, err)
			break
		}
		if round == 3 {
			t.Fatalf("round %d: the death was noticed some other way first: %v (%s after the kill)", round, err, took)
		}
	}
	// A fresh worker replaces it.
	if r := mustDo(t, p, pool.Request{}, "pid", nil); r.PID == 0 {
		t.Fatalf("replacement: %+v", r)
	}
}
