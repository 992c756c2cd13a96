package bench

import (
	"context"
	"strconv"
	"time"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

// runStartup times an eager pool start of StartupWorkers workers that each
// sleep StartupDelay before they run WorkerCmd, all allowed to start at
// once; and, for reference, the same start of one worker alone.
func runStartup(ctx context.Context, cfg *Config) (*StartupMeasurement, error) {
	one, err := timePoolStart(ctx, cfg, 1)
	if err != nil {
		return nil, err
	}
	all := one
	if cfg.StartupWorkers > 1 {
		if all, err = timePoolStart(ctx, cfg, cfg.StartupWorkers); err != nil {
			return nil, err
		}
	}
	return &StartupMeasurement{Workers: cfg.StartupWorkers, Delay: cfg.StartupDelay, Ready: all, ReadyOne: one}, nil
}

func timePoolStart(ctx context.Context, cfg *Config, n int) (time.Duration, error) {
	delay := strconv.FormatFloat(cfg.StartupDelay.Seconds(), 'f', -1, 64)
	// sh and sleep(1) delay any worker program without changing it; exec
	// keeps the worker's pid, pipes and process group.
	argv := append([]string{"sh", "-c", `sleep "$0" && exec "$@"`, delay}, cfg.WorkerCmd...)
	p, err := pool.New(pool.Config{
		Name: "startup", Size: n, StartConcurrency: n,
		Worker: worker.Config{Command: argv, StartupTimeout: cfg.StartupDelay + 30*time.Second},
		Logger: cfg.Logger, HealthInterval: -1,
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = p.Stop(sctx)
	}()
	sctx, cancel := context.WithTimeout(ctx, cfg.StartupDelay+time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := p.Start(sctx); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
