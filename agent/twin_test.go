package agent_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
)

// TestNameTwinLogged: two agents started under one name take each other's
// leases as their own, so their partitions and sessions go back and forth;
// the registry shows one entry. Each logs an error naming the other, and an
// agent alone under its name logs none.
func TestNameTwinLogged(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	start := func(name string) *observer.ObservedLogs {
		t.Helper()
		core, logs := observer.New(zapcore.ErrorLevel)
		cfg := agent.Config{Name: name, Queue: fastQueue(), Logger: zap.New(core)}
		cfg.Pool.Size = 1
		cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
		a, err := agent.New(srv.Connect(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := a.Stop(ctx); err != nil {
				t.Errorf("stop %s: %v", name, err)
			}
		})
		return logs
	}
	alone := start("alone")
	first := start("twin")
	second := start("twin")
	const msg = "another agent runs under this agent's name"
	fleettest.Eventually(t, 30*time.Second, func() error {
		for _, logs := range []*observer.ObservedLogs{first, second} {
			if logs.FilterMessageSnippet(msg).Len() == 0 {
				return errors.New("a twin did not log the other")
			}
		}
		return nil
	})
	if n := alone.FilterMessageSnippet(msg).Len(); n != 0 {
		t.Fatalf("the agent alone under its name logged %d twin errors", n)
	}
}
