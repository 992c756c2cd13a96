package pool_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

func benchPool(b *testing.B) *pool.Pool {
	cfg := config(b)
	cfg.Logger = zap.NewNop()
	return startPool(b, cfg)
}

// BenchmarkWorkerCallBaseline is a raw worker.Call on one worker: the floor
// that BenchmarkCheckoutCall is measured against.
func BenchmarkWorkerCallBaseline(b *testing.B) {
	argv, env := testworker.Command()
	ctx := context.Background()
	w, err := worker.Start(ctx, worker.Config{Command: argv, Env: env})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	}()
	c := &worker.Call{Command: "echo", Payload: json.RawMessage(`{"x":1}`)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := w.Call(ctx, c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheckoutCall is checkout + echo call + release.
func BenchmarkCheckoutCall(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	c := &worker.Call{Command: "echo", Payload: json.RawMessage(`{"x":1}`)}
	b.ReportAllocs()
	for b.Loop() {
		l, err := p.Checkout(ctx, pool.Request{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.Call(ctx, c); err != nil {
			b.Fatal(err)
		}
		l.Release()
	}
}

// BenchmarkCheckoutCallSession is the same with a session bound to the
// worker.
func BenchmarkCheckoutCallSession(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	c := &worker.Call{Command: "echo", Payload: json.RawMessage(`{"x":1}`)}
	req := pool.Request{Session: "s"}
	b.ReportAllocs()
	for b.Loop() {
		l, err := p.Checkout(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.Call(ctx, c); err != nil {
			b.Fatal(err)
		}
		l.Release()
	}
}

// BenchmarkCheckoutCheckin is the pool's own cost: checkout (with
// validation) and release, no call.
func BenchmarkCheckoutCheckin(b *testing.B) {
	p := benchPool(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		l, err := p.Checkout(ctx, pool.Request{})
		if err != nil {
			b.Fatal(err)
		}
		l.Release()
	}
}

// BenchmarkCheckoutCheckinContended: many goroutines on a 4-worker pool,
// exercising the waiter hand-off.
func BenchmarkCheckoutCheckinContended(b *testing.B) {
	cfg := config(b)
	cfg.Logger = zap.NewNop()
	cfg.Size = 4
	p := startPool(b, cfg)
	ctx := context.Background()
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l, err := p.Checkout(ctx, pool.Request{})
			if err != nil {
				b.Error(err)
				return
			}
			l.Release()
		}
	})
}
