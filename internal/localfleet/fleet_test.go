package localfleet_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// TestStartBalancesAndWaitBalancedNeverLies: Start returns a fleet whose
// agents own every partition once, each agent its quota, and WaitBalanced
// on a state that cannot be balanced reports it when ctx ends instead of
// returning nil.
func TestStartBalancesAndWaitBalancedNeverLies(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv, env := testworker.Command()
	var acfg agent.Config
	acfg.Pool.Size = 1
	acfg.Pool.Worker = worker.Config{Command: argv, Env: env}
	f, err := localfleet.Start(ctx, localfleet.Config{
		TempPattern: "localfleet-test-", Queue: queue.Config{Partitions: 8}, Agents: 2, Agent: acfg,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())

	agents := f.Agents()
	seen := map[int]string{}
	for _, a := range agents {
		if n := len(a.Partitions()); n != 4 {
			t.Errorf("%s owns %v after Start, want 4 of 8 partitions", a.Name(), a.Partitions())
		}
		for _, p := range a.Partitions() {
			if o, dup := seen[p]; dup {
				t.Errorf("partition %d owned by %s and %s", p, o, a.Name())
			}
			seen[p] = a.Name()
		}
	}
	if len(seen) != 8 {
		t.Errorf("%d of 8 partitions owned after Start: %v", len(seen), seen)
	}

	// Two agents cannot balance 9 partitions of a fleet that has 8.
	wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer wcancel()
	err = localfleet.WaitBalanced(wctx, agents, 9)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitBalanced on an impossible state = %v, want an error wrapping the deadline", err)
	}

	if _, err := localfleet.Start(ctx, localfleet.Config{Agents: -1}); !errors.Is(err, localfleet.ErrInvalidConfig) {
		t.Errorf("Agents -1: %v, want ErrInvalidConfig", err)
	}
}
