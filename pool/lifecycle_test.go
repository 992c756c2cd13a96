package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

func livePIDs(p *pool.Pool) []int {
	var pids []int
	for _, w := range p.Stats().Workers {
		if w.PID != 0 {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

func checkAllGone(t *testing.T, p *pool.Pool, pids []int) {
	t.Helper()
	select {
	case <-p.Done():
	default:
		t.Fatal("Done not closed after stop")
	}
	for _, pid := range pids {
		if pidAlive(pid) {
			t.Fatalf("worker process %d still exists", pid)
		}
	}
	_, err := p.Reserve(pool.Request{})
	wantCheckoutErr(t, err, pool.ErrPoolStopped)
}

// TestStopDrains: Stop lets the call in flight finish, fails the waiters and
// leaves no process behind (goroutines are checked by TestMain).
func TestStopDrains(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.Size = 2
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pids := livePIDs(p)
	if len(pids) != 2 {
		t.Fatalf("pids %v", pids)
	}

	held, err := p.Checkout(ctx, pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	other.Release()
	// Waits for the held session's worker.
	waiter, err := p.Reserve(pool.Request{Session: "s"})
	if err != nil {
		t.Fatal(err)
	}
	progress := make(chan struct{}, 1)
	type result struct {
		res worker.Result
		err error
	}
	inflight := make(chan result, 1)
	go func() {
		res, err := held.Call(ctx, &worker.Call{
			Command: "sleep", Payload: json.RawMessage(`{"ms":300}`),
			OnProgress: func(json.RawMessage) {
				select {
				case progress <- struct{}{}:
				default:
				}
			},
		})
		held.Release()
		inflight <- result{res, err}
	}()
	<-progress

	stopped := make(chan error, 1)
	go func() { stopped <- p.Stop(ctx) }()
	_, err = waiter.Wait(ctx)
	wantCheckoutErr(t, err, pool.ErrPoolStopped)
	r := <-inflight
	if r.err != nil || !r.res.OK || string(r.res.Value) != `{"slept":300}` {
		t.Fatalf("in-flight call: %+v %v", r.res, r.err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	checkAllGone(t, p, pids)
	if err := p.Stop(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	p.Kill()
}

func TestStopCutShort(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.IgnoreTerm)
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pids := livePIDs(p)
	l, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	callErr := make(chan error, 1)
	go func() {
		_, err := l.Call(ctx, &worker.Call{Command: "hang"})
		l.Release()
		callErr <- err
	}()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := p.Stop(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop: %v", err)
	}
	if err := <-callErr; !errors.Is(err, worker.ErrStopped) {
		t.Fatalf("hung call: %v", err)
	}
	checkAllGone(t, p, pids)
}

func TestKill(t *testing.T) {
	t.Parallel()
	cfg := config(t, testworker.IgnoreTerm)
	cfg.Size = 2
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	pids := livePIDs(p)
	l, err := p.Checkout(ctx, pool.Request{})
	if err != nil {
		t.Fatal(err)
	}
	callErr := make(chan error, 1)
	go func() {
		_, err := l.Call(ctx, &worker.Call{Command: "hang"})
		callErr <- err
	}()
	p.Kill()
	if err := <-callErr; err == nil {
		t.Fatal("hung call survived Kill")
	}
	l.Release() // after Kill: harmless
	checkAllGone(t, p, pids)
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestLazy(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.Size = 2
	cfg.Lazy = true
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer stopPool(t, p)
	if err := p.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Idle+st.Starting+st.Busy != 0 {
		t.Fatalf("lazy pool started workers: %+v", st)
	}
	mustDo(t, p, pool.Request{}, "pid", nil)
	if st := p.Stats(); st.Idle != 1 {
		t.Fatalf("stats %+v", st)
	}
	select {
	case <-p.Ready():
		t.Fatal("Ready with one of two workers")
	default:
	}
}

func TestNotStarted(t *testing.T) {
	t.Parallel()
	p, err := pool.New(config(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Checkout(testCtx(t), pool.Request{})
	wantCheckoutErr(t, err, pool.ErrPoolStopped)
	if err := p.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	if err := p.Start(testCtx(t)); !errors.Is(err, pool.ErrPoolStopped) {
		t.Fatalf("start after stop: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	base := func() pool.Config { return pool.Config{Worker: worker.Config{Command: []string{"true"}}} }
	cases := []struct {
		field string
		mod   func(*pool.Config)
	}{
		{"Worker.Command", func(c *pool.Config) { c.Worker.Command = nil }},
		{"Size", func(c *pool.Config) { c.Size = -1 }},
		{"StartConcurrency", func(c *pool.Config) { c.StartConcurrency = -1 }},
		{"MaxJobs", func(c *pool.Config) { c.MaxJobs = -1 }},
		{"TTL", func(c *pool.Config) { c.TTL = -1 }},
		{"IdleTTL", func(c *pool.Config) { c.IdleTTL = -1 }},
		{"MaxRSS", func(c *pool.Config) { c.MaxRSS = -1 }},
		{"MaxSessions", func(c *pool.Config) { c.MaxSessions = -1 }},
		{"MaxWaiters", func(c *pool.Config) { c.MaxWaiters = -1 }},
		{"HealthTimeout", func(c *pool.Config) { c.HealthTimeout = -1 }},
		{"HealthFailures", func(c *pool.Config) { c.HealthFailures = -1 }},
		{"BackoffMin", func(c *pool.Config) { c.BackoffMin = -1 }},
		{"BackoffMax", func(c *pool.Config) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond }},
		{"DegradedAfter", func(c *pool.Config) { c.DegradedAfter = -1 }},
	}
	for _, tc := range cases {
		cfg := base()
		tc.mod(&cfg)
		_, err := pool.New(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	p, err := pool.New(base())
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Size != 4 {
		t.Fatalf("default size %d", st.Size)
	}
	p.Kill()
}
