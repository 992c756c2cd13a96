package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

func TestMain(m *testing.M) { sharedtest.TestMain(m) }

// config returns a one-worker pool config running the helper worker.
// (fleettest.StartPool cannot be used here: fleettest imports packages built
// on pool, so the tests use testworker directly and startPool below mirrors
// StartPool.)
func config(t testing.TB, opts ...testworker.Option) pool.Config {
	argv, env := testworker.Command(opts...)
	return pool.Config{
		Worker: worker.Config{Command: argv, Env: env, StopGrace: 2 * time.Second},
		Size:   1,
		Logger: zaptest.NewLogger(t),
	}
}

// startPool starts p eagerly, waits until every worker is ready and stops it
// on cleanup, failing the test if the stop is cut short.
func startPool(t testing.TB, cfg pool.Config) *pool.Pool {
	t.Helper()
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		p.Kill()
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { stopPool(t, p) })
	return p
}

func stopPool(t testing.TB, p *pool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Errorf("stop: %v", err)
	}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// sessionReply is the helper worker's answer to "session", "pid" and
// "sessions".
type sessionReply struct {
	PID        int      `json:"pid"`
	Session    string   `json:"session"`
	NewSession bool     `json:"new_session"`
	Count      int      `json:"count"`
	Seq        int      `json:"seq"`
	Live       []string `json:"live"`
	Ended      []string `json:"ended"`
}

// do runs command on p and decodes an OK result into a sessionReply.
func do(ctx context.Context, p *pool.Pool, req pool.Request, command string, payload any) (sessionReply, pool.CallInfo, error) {
	var raw json.RawMessage
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return sessionReply{}, pool.CallInfo{}, err
		}
		raw = b
	}
	res, info, err := p.Do(ctx, req, &worker.Call{Command: command, Payload: raw})
	if err != nil {
		return sessionReply{}, info, err
	}
	if !res.OK {
		return sessionReply{}, info, errors.New("application error: " + res.Error.Message)
	}
	var r sessionReply
	if err := json.Unmarshal(res.Value, &r); err != nil {
		return sessionReply{}, info, err
	}
	return r, info, nil
}

func mustDo(t testing.TB, p *pool.Pool, req pool.Request, command string, payload any) sessionReply {
	t.Helper()
	r, _, err := do(testCtx(t), p, req, command, payload)
	if err != nil {
		t.Fatalf("%s %+v: %v", command, req, err)
	}
	return r
}

func pidAlive(pid int) bool {
	return syscall.Kill(pid, 0) != syscall.ESRCH
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	sharedtest.Eventually(t, 15*time.Second, func() error {
		if !cond() {
			return errors.New("waiting for " + what)
		}
		return nil
	})
}

// wantCheckoutErr checks that err is a *pool.CheckoutError with reason.
func wantCheckoutErr(t testing.TB, err, reason error) *pool.CheckoutError {
	t.Helper()
	var ce *pool.CheckoutError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v (%T), want a *pool.CheckoutError", err, err)
	}
	if !errors.Is(err, reason) || !errors.Is(err, pool.ErrCheckout) {
		t.Fatalf("got %v, want reason %v", err, reason)
	}
	return ce
}

// killWorker SIGKILLs the lease's worker after releasing it and waits until
// the worker has noticed (Done).
func killCheckedOut(t testing.TB, p *pool.Pool, req pool.Request) int {
	t.Helper()
	l, err := p.Checkout(testCtx(t), req)
	if err != nil {
		t.Fatal(err)
	}
	w := l.Worker()
	l.Release()
	if err := syscall.Kill(w.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w.Done()
	return w.PID()
}
