package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
	"github.com/procfleet/procfleet/worker/protocol"
)

func TestCheckoutAndCall(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.Size = 2
	p := startPool(t, cfg)
	ctx := testCtx(t)

	res, info, err := p.Do(ctx, pool.Request{}, &worker.Call{Command: "echo", Payload: json.RawMessage(`{"x":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK || string(res.Value) != `{"x":1}` {
		t.Fatalf("got %+v", res)
	}
	if info.PID == 0 || info.WorkerID == "" || info.NewSession {
		t.Fatalf("info %+v", info)
	}

	l, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.Call(ctx, &worker.Call{Command: "pid"})
	if err != nil || !r.OK {
		t.Fatalf("%+v %v", r, err)
	}
	if want := fmt.Sprintf(`{"pid":%d}`, l.PID()); string(r.Value) != want {
		t.Fatalf("got %s want %s", r.Value, want)
	}
	l.Release()
	l.Release() // idempotent
	if _, err := l.Call(ctx, &worker.Call{Command: "echo"}); !errors.Is(err, pool.ErrLeaseReleased) {
		t.Fatalf("call after release: %v", err)
	}
	st := p.Stats()
	if st.Checkouts != 2 || st.Idle != 2 || st.Busy != 0 || st.Removed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCheckoutDeadWorker(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.HealthInterval = -1 // only the checkout may notice
	p := startPool(t, cfg)
	ctx := testCtx(t)

	pid := killCheckedOut(t, p, pool.Request{})
	_, err := p.Checkout(ctx, pool.Request{})
	ce := wantCheckoutErr(t, err, pool.ErrWorkerDead)
	if ce.PID != pid || !errors.Is(err, worker.ErrDead) {
		t.Fatalf("error %v: want pid %d and a worker.ErrDead cause", err, pid)
	}
	r := mustDo(t, p, pool.Request{}, "pid", nil)
	if r.PID == pid || r.PID == 0 {
		t.Fatalf("replacement pid %d, old %d", r.PID, pid)
	}
	st := p.Stats()
	if st.Removed != 1 || st.Restarts != 1 || st.CheckoutErrors != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestWorkerDiesAfterValidation(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	l, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	pid := l.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-l.Worker().Done()
	_, err = l.Call(ctx, &worker.Call{Command: "echo", Payload: json.RawMessage(`1`)})
	var we *worker.Error
	if !errors.As(err, &we) || !errors.Is(err, worker.ErrDead) {
		t.Fatalf("got %v, want a *worker.Error with ErrDead", err)
	}
	l.Release()
	if r := mustDo(t, p, pool.Request{}, "pid", nil); r.PID == pid {
		t.Fatal("dead worker reused")
	}

	// The same race without waiting: the kill lands anywhere between the
	// checkout and the reply. Every outcome is typed and nothing hangs.
	for i := range 5 {
		l, err := p.Checkout(ctx, pool.Request{})
		if err != nil {
			wantCheckoutErr(t, err, pool.ErrWorkerDead)
			continue
		}
		killed := make(chan error, 1)
		go func(pid int) { killed <- syscall.Kill(pid, syscall.SIGKILL) }(l.PID())
		res, err := l.Call(ctx, &worker.Call{Command: "echo", Payload: json.RawMessage(fmt.Sprint(i))})
		if err != nil && !errors.As(err, &we) {
			t.Fatalf("untyped error %v", err)
		}
		if err == nil && string(res.Value) != fmt.Sprint(i) {
			t.Fatalf("got %s", res.Value)
		}
		// Let the kill land before the worker goes back: a kill still in
		// flight would otherwise hit the next checkout of this worker
		// (the final call below), not this call.
		if err := <-killed; err != nil {
			t.Fatal(err)
		}
		<-l.Worker().Done()
		l.Release()
	}
	if st := p.Stats(); st.Removed < 2 {
		t.Fatalf("stats %+v", st)
	}
	// The last killed worker may still be in the pool: the next checkout
	// then finds it dead and says so (typed), and the one after that gets
	// its replacement.
	if _, _, err := do(ctx, p, pool.Request{}, "pid", nil); err != nil {
		wantCheckoutErr(t, err, pool.ErrWorkerDead)
		mustDo(t, p, pool.Request{}, "pid", nil)
	}
}

func TestCallFailuresReplaceWorker(t *testing.T) {
	t.Parallel()
	cases := []struct {
		command string
		wantErr error
	}{
		{"garbage", worker.ErrProtocol},
		{"oversized", protocol.ErrFrameTooLarge},
		{"zero", protocol.ErrEmptyFrame},
		{"badid", worker.ErrProtocol},
		{"half", worker.ErrDead},
		{"crash", worker.ErrDead},
		{"exit0", worker.ErrDead},
	}
	for _, tc := range cases {
		t.Run(tc.command, func(t *testing.T) {
			t.Parallel()
			p := startPool(t, config(t))
			ctx := testCtx(t)
			before := mustDo(t, p, pool.Request{}, "pid", nil).PID
			_, _, err := p.Do(ctx, pool.Request{}, &worker.Call{Command: tc.command})
			var we *worker.Error
			if !errors.As(err, &we) || !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if after := mustDo(t, p, pool.Request{}, "pid", nil).PID; after == before {
				t.Fatal("broken worker reused")
			}
			if st := p.Stats(); st.Removed != 1 || st.LastError == "" {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestJobTimeout(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	pid := mustDo(t, p, pool.Request{}, "pid", nil).PID
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	_, _, err := p.Do(short, pool.Request{}, &worker.Call{Command: "sleep", Payload: json.RawMessage(`{"ms":10000}`)})
	if !errors.Is(err, worker.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	waitFor(t, "the timed-out worker to be gone", func() bool { return !pidAlive(pid) })

	for i := range 3 {
		want := fmt.Sprintf(`"after-timeout-%d"`, i)
		res, info, err := p.Do(ctx, pool.Request{}, &worker.Call{Command: "echo", Payload: json.RawMessage(want)})
		if err != nil || string(res.Value) != want {
			t.Fatalf("got %s %v, want %s", res.Value, err, want)
		}
		if info.PID == pid {
			t.Fatal("timed-out worker reused")
		}
	}
	if st := p.Stats(); st.Removed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestAppErrorKeepsWorker(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	pid := mustDo(t, p, pool.Request{}, "pid", nil).PID
	for _, cmd := range []string{"fail", "retry", "no-such-command"} {
		res, info, err := p.Do(ctx, pool.Request{}, &worker.Call{Command: cmd})
		if err != nil || res.OK || res.Error == nil {
			t.Fatalf("%s: %+v %v", cmd, res, err)
		}
		if info.PID != pid {
			t.Fatalf("%s: ran on %d, want %d", cmd, info.PID, pid)
		}
	}
	if r := mustDo(t, p, pool.Request{}, "pid", nil); r.PID != pid {
		t.Fatalf("worker replaced after app errors")
	}
	if st := p.Stats(); st.Removed != 0 || st.Restarts != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestMaxWaitersAndWaitTimeout(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.MaxWaiters = 2
	p := startPool(t, cfg)
	ctx := testCtx(t)

	held, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	t1, err := p.Reserve(pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	t2, err := p.Reserve(pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Reserve(pool.Request{})
	wantCheckoutErr(t, err, pool.ErrPoolSaturated)
	_, err = p.Checkout(ctx, pool.Request{Session: "other"})
	wantCheckoutErr(t, err, pool.ErrPoolSaturated)

	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = t1.Wait(short)
	wantCheckoutErr(t, err, pool.ErrCheckoutTimeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want it to match context.DeadlineExceeded", err)
	}
	t2.Cancel()
	_, err = t2.Wait(ctx)
	wantCheckoutErr(t, err, pool.ErrCheckoutTimeout)
	if st := p.Stats(); st.Waiters != 0 {
		t.Fatalf("stats %+v", st)
	}
	held.Release()
	mustDo(t, p, pool.Request{}, "pid", nil)
	if st := p.Stats(); st.WaitMax != 0 || st.Sessions != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHandOffToWaiter(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	held, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	var tickets []*pool.Ticket
	for range 3 {
		tk, err := p.Reserve(pool.Request{})
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	// A canceled ticket gives its place up; a later Cancel after Wait is
	// harmless.
	tickets[1].Cancel()
	held.Release()
	for _, i := range []int{0, 2} {
		l, err := tickets[i].Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if l.Waited() <= 0 {
			t.Fatalf("ticket %d waited %v", i, l.Waited())
		}
		l.Release()
		tickets[i].Cancel()
	}
	st := p.Stats()
	if st.Waiters != 0 || st.WaitMax <= 0 || st.WaitTotal < st.WaitMax || st.Checkouts != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNeverReadyBacksOff(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.StartNeverReady)
	cfg.Worker.StartupTimeout = 100 * time.Millisecond
	cfg.BackoffMin = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.DegradedAfter = 2
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stopPool(t, p)

	ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
	defer cancel()
	err = p.Start(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("start: %v", err)
	}
	t.Logf("start: %v", err)
	waitFor(t, "degraded", func() bool {
		st := p.Stats()
		return st.Degraded && st.Backoff > 0 && st.StartFailures >= 2 && st.ConsecutiveFailures >= 2
	})
	st := p.Stats()
	if st.Idle != 0 || st.Starting != 1 {
		t.Fatalf("stats %+v", st)
	}
	if !strings.Contains(st.LastError, "startup") {
		t.Fatalf("no LastError: %+v", st)
	}
	short, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	_, err = p.Checkout(short, pool.Request{})
	wantCheckoutErr(t, err, pool.ErrCheckoutTimeout)
}

// TestReadyThenExitBacksOff: a worker that exits right after its ready
// frame is a crash loop like one that dies before it. Its deaths, found by
// checkouts or by calls it never read, count as failed starts while it is
// on probation, so the pool backs off and reports Degraded instead of
// restarting it at once, for ever, while every job that draws it fails.
func TestReadyThenExitBacksOff(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.StartReadyExit)
	cfg.Size = 2
	cfg.BackoffMin = 20 * time.Millisecond
	cfg.BackoffMax = 200 * time.Millisecond
	cfg.DegradedAfter = 3
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stopPool(t, p)
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	_ = p.Start(ctx) // the workers do get ready, and die
	calls := 0
	waitFor(t, "degraded", func() bool {
		cctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
		_, _, err := do(cctx, p, pool.Request{}, "echo", 1)
		cancel()
		calls++
		if err == nil {
			t.Fatal("a worker that exits after ready answered a call")
		}
		st := p.Stats()
		return st.Degraded && st.Backoff > 0 && st.ConsecutiveFailures >= 3
	})
	st := p.Stats()
	t.Logf("after %d calls: %+v", calls, st)
	if !strings.Contains(st.LastError, "counted as a failed start") {
		t.Errorf("LastError %q does not say the death counted as a failed start", st.LastError)
	}
}

// TestProbationEndsOnAnswer: a worker that answers has started well, so a
// later death, even a quick one, is not a failed start: no backoff.
func TestProbationEndsOnAnswer(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.BackoffMin = 5 * time.Second
	p := startPool(t, cfg)
	for range 3 {
		mustDo(t, p, pool.Request{}, "pid", nil)
		_, _, err := do(testCtx(t), p, pool.Request{}, "crash", nil)
		if err == nil {
			t.Fatal("crash answered")
		}
		if st := p.Stats(); st.ConsecutiveFailures != 0 || st.Backoff != 0 {
			t.Fatalf("a proven worker's crash counted as a failed start: %+v", st)
		}
	}
}

// TestCancelKeepsPlace: a session's first job canceled while waiting for
// any worker hands its place in line to the session's next job.
func TestCancelKeepsPlace(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	held, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := p.Reserve(pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Reserve(pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Reserve(pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	a.Cancel()
	a.Cancel()
	held.Release()
	lb, err := b.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if lb.Session() != "s" || !lb.NewSession() || lb.WorkerID() == "" {
		t.Fatalf("lease %s %v %s", lb.Session(), lb.NewSession(), lb.WorkerID())
	}
	if st := p.Stats(); st.Waiters != 1 || st.Busy != 1 {
		t.Fatalf("stats %+v", st)
	}
	checkCheapStats(t, p)
	lb.Release()
	lc, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lc.Release()

	// Canceling a ticket that already got its worker gives the worker back.
	d, err := p.Reserve(pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	d.Cancel()
	if st := p.Stats(); st.Idle != 1 || st.Busy != 0 || st.Waiters != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkCheapStats(t, p)
	_, err = d.Wait(ctx)
	wantCheckoutErr(t, err, pool.ErrCheckoutTimeout)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after cancel: %v", err)
	}
}

func TestLeaseRemove(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	l, err := p.Checkout(ctx, pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Call(ctx, &worker.Call{Command: "session", Payload: json.RawMessage(`0`)}); err != nil {
		t.Fatal(err)
	}
	pid := l.PID()
	l.Remove(errors.New("looked at me funny"))
	l.Release()
	st := p.Stats()
	if st.Removed != 1 || !strings.Contains(st.LastError, "funny") {
		t.Fatalf("stats %+v", st)
	}
	// The holder removed it, so the session rebinds without an error.
	if r := mustDo(t, p, pool.Request{Session: "s"}, "session", 1); r.PID == pid || !r.NewSession {
		t.Fatalf("after Remove %+v", r)
	}
}

func TestCheckoutErrorString(t *testing.T) {
	t.Parallel()
	err := &pool.CheckoutError{Reason: pool.ErrWorkerDead, WorkerID: "pool-3", PID: 42, Session: "s1", Err: context.Canceled}
	want := "pool: checkout failed: worker is dead (worker pool-3 pid 42) session s1: context canceled"
	if err.Error() != want {
		t.Fatalf("got %q", err.Error())
	}
	if !errors.Is(err, pool.ErrCheckout) || !errors.Is(err, pool.ErrWorkerDead) || !errors.Is(err, context.Canceled) || errors.Is(err, pool.ErrWorkerBroken) {
		t.Fatal("errors.Is mismatch")
	}
}

// checkCheapStats checks that Free and Waiting, the per-job accessors,
// agree with Stats.
func checkCheapStats(t *testing.T, p *pool.Pool) {
	t.Helper()
	st := p.Stats()
	if free, waiting := p.Free(), p.Waiting(); free != st.Idle-st.Waiters || waiting != st.Waiters {
		t.Fatalf("Free %d, Waiting %d; Stats says idle %d, waiters %d", free, waiting, st.Idle, st.Waiters)
	}
}
