package dispatcher_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestPythonClient runs the Python client's unittest suite
// (clients/python/test_procfleet_client.py) against a real fleet: an
// embedded NATS server, two agents running the helper worker, and
// dispatcher.Serve with its HTTP API and tokens. Without python3, or when
// the fleet cannot start, it fails: it is never skipped.
func TestPythonClient(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for the Python client's tests: %v", err)
	}
	dir, err := filepath.Abs(filepath.Join("..", "clients", "python"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "test_procfleet_client.py")); err != nil {
		t.Fatal(err)
	}
	// The second agent serves queue q2 as well.
	f := fleettest.StartFleet(t, fleettest.FleetConfig{Agents: 2, Configure: func(i int, cfg *agent.Config) {
		if i == 2 {
			cfg.Queues = []agent.QueueConfig{{Name: queue.DefaultQueue, Pool: cfg.Pool}, {Name: "q2", Pool: cfg.Pool}}
		}
	}})
	nc := f.Server.Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{HTTPTokens: testTokens()})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, "-m", "unittest", "-v", "test_procfleet_client")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"PROCFLEET_TEST_URL="+s.URL,
		"PROCFLEET_TEST_TOKEN="+tokAll,
		"PROCFLEET_TEST_READ_TOKEN="+tokRead,
		"PROCFLEET_TEST_MAX_PAYLOAD="+strconv.FormatInt(nc.MaxPayload(), 10),
		"PYTHONDONTWRITEBYTECODE=1",
	)
	out, err := cmd.CombinedOutput()
	t.Logf("python3 -m unittest test_procfleet_client:\n%s", out)
	if err != nil {
		t.Fatalf("the Python client's tests failed: %v", err)
	}
}
