package agent_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
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
