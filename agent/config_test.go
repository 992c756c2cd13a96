package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestNewConfigErrors: a bad Config is refused by New with an error that
// wraps ErrInvalidConfig and names every bad field.
func TestNewConfigErrors(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	cfg := agent.Config{Name: "bad name", Capacity: -1}
	cfg.Pool.Worker.Command = nil
	a, err := agent.New(nc, cfg)
	if a != nil || !errors.Is(err, agent.ErrInvalidConfig) {
		t.Fatalf("New = %v, %v; want ErrInvalidConfig", a, err)
	}
	for _, field := range []string{"Name", "Pool.Worker.Command", "Capacity"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}

// TestAgentAdoptsPartitions: an agent whose Queue.Partitions is 0 (the
// agent program's default) serves the jobs stream's partition count,
// whatever made it; one given another count than the stream's stops at
// start, naming both.
func TestAgentAdoptsPartitions(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 1)
	cfg.Agent.Queue.Partitions = 8
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := func(name string, partitions int) (*agent.Agent, error) {
		c := agent.Config{Name: name, Queue: queue.Config{Partitions: partitions}, RebalanceInterval: 200 * time.Millisecond}
		c.Pool.Size = 1
		c.Pool.Worker.Command, c.Pool.Worker.Env = fleettest.HelperWorker()
		a, err := agent.New(f.Server.Connect(t), c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = a.Stop(ctx)
		})
		return a, a.Start(ctx)
	}

	adopting, err := start("adopting", 0)
	if err != nil {
		t.Fatalf("start with the stream's count to adopt: %v", err)
	}
	first := f.Agents[0]
	fleettest.Eventually(t, 30*time.Second, func() error {
		a, b := adopting.Partitions(), first.Partitions()
		if len(a) == 0 || len(a)+len(b) != 8 {
			return fmt.Errorf("the agents hold %v and %v, want the stream's 8 between them", a, b)
		}
		return nil
	})
	for i := range 4 {
		id := submit(t, f, fmt.Sprintf("s%d", i), &queue.Job{ID: fmt.Sprintf("adopted-%d", i), Command: "echo", Payload: json.RawMessage(`1`)})
		if r := result(t, f, id); !r.OK {
			t.Fatalf("result %+v", r)
		}
	}

	_, err = start("wrong-count", 64)
	var mm *queue.MismatchError
	if !errors.As(err, &mm) || mm.Field != "Partitions" || !strings.Contains(err.Error(), "64") || !strings.Contains(err.Error(), "8") {
		t.Fatalf("start with 64 partitions against a stream of 8: %v, want a MismatchError naming both counts", err)
	}
}
