package fleettest

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/pool"
)

// poolStartTimeout bounds StartPool's wait for every worker: a pool that is
// not ready by then (a crash loop, a worker that never becomes ready) fails
// the test instead of hanging it.
const poolStartTimeout = time.Minute

// poolStopTimeout bounds the graceful stop at cleanup.
const poolStopTimeout = 30 * time.Second

// StartPool starts a pool eagerly (cfg.Lazy is ignored) and returns once
// every worker is ready; it fails the test if that does not happen within a
// minute (or before the test's deadline). cfg.Logger defaults to a zaptest
// logger. On test cleanup the pool is stopped gracefully; a stop that has to
// be cut short fails the test.
func StartPool(t testing.TB, cfg pool.Config) *pool.Pool {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t)
	}
	cfg.Lazy = false
	p, err := pool.New(cfg)
	if err != nil {
		t.Fatalf("fleettest: new pool: %v", err)
	}
	timeout := poolStartTimeout
	if tt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := tt.Deadline(); ok {
			timeout = min(timeout, time.Until(d)*9/10)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		p.Kill()
		t.Fatalf("fleettest: start pool: %v (stats: %+v)", err, p.Stats())
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), poolStopTimeout)
		defer cancel()
		if err := p.Stop(ctx); err != nil {
			t.Errorf("fleettest: stop pool: %v", err)
		}
	})
	return p
}
