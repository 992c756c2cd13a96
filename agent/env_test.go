package agent_test

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/queue"
)

func TestWorkerEnvironment(t *testing.T) {
	t.Parallel()
	got := agent.WorkerEnvironment(
		[]string{"PATH=/bin", "LC_ALL=C", "NATS_PASSWORD=s3cret", "AWS_SECRET_ACCESS_KEY=x", "OMP_NUM_THREADS=4", "FOO=old"},
		[]string{"PATH", "LC_*", "OMP_NUM_THREADS", "FOO"},
		[]string{"FOO=new", "EXTRA=1"},
	)
	want := []string{"PATH=/bin", "LC_ALL=C", "OMP_NUM_THREADS=4", "FOO=new", "EXTRA=1", "OPENBLAS_NUM_THREADS=1", "MKL_NUM_THREADS=1"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

// Not parallel: it sets a variable in the test process's environment.
func TestAgentSecretsDoNotReachWorkers(t *testing.T) {
	t.Setenv("PROCFLEET_TEST_SECRET", "hunter2")
	cfg := fleetConfig(1, 1)
	argv, _ := fleettest.HelperWorker()
	cfg.Agent.Pool.Worker.Command = argv
	cfg.Agent.Pool.Worker.Env = nil // go through the allowlist
	cfg.Agent.WorkerEnv = []string{testworker.EnvHelper + "=1", "GORACE=" + os.Getenv("GORACE") + " atexit_sleep_ms=0", "MODEL=small"}
	f := fleettest.StartFleet(t, cfg)
	r := result(t, f, submit(t, f, "", &queue.Job{Command: "env"}))
	var env []string
	if err := json.Unmarshal(r.Result, &env); err != nil {
		t.Fatal(err)
	}
	has := func(kv string) bool { return slices.Contains(env, kv) }
	if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PROCFLEET_TEST_SECRET=") }) {
		t.Errorf("the agent's secret reached the worker: %v", env)
	}
	omp := os.Getenv("OMP_NUM_THREADS")
	if omp == "" {
		omp = "1"
	}
	for _, kv := range []string{"MODEL=small", "OMP_NUM_THREADS=" + omp, "PATH=" + os.Getenv("PATH")} {
		if !has(kv) {
			t.Errorf("worker environment lacks %s: %v", kv, env)
		}
	}
}
