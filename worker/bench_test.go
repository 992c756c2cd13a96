package worker_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/procfleet/procfleet/worker"
)

// BenchmarkCall measures one echo round trip over the pipes to a helper
// worker: one frame written, one frame read, one wakeup of the caller.
func BenchmarkCall(b *testing.B) {
	for _, bc := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"background", func() (context.Context, context.CancelFunc) { return context.Background(), func() {} }},
		{"with-timeout", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Minute)
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := config(b)
			cfg.Logger = nil
			w := start(b, cfg)
			ctx, cancel := bc.ctx()
			defer cancel()
			c := &worker.Call{Command: "echo", Payload: json.RawMessage(`{"input":[1,2,3],"name":"bench"}`)}
			b.ReportAllocs()
			for b.Loop() {
				res, err := w.Call(ctx, c)
				if err != nil || !res.OK {
					b.Fatalf("Call = %+v, %v", res, err)
				}
			}
		})
	}
}
