package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/sharedtest"
)

func TestMain(m *testing.M) { sharedtest.VerifyTestMain(m) }

func TestUnreachableNATSNamesURL(t *testing.T) {
	err := run([]string{"--nats", "nats://127.0.0.1:1", "--worker-cmd", "python3 worker.py", "--log-level", "error"})
	if err == nil || !strings.Contains(err.Error(), "nats://127.0.0.1:1") {
		t.Fatalf("want an error naming the URL, got %v", err)
	}
}

func TestWorkerCmdRequired(t *testing.T) {
	err := run([]string{"--nats", "nats://127.0.0.1:1"})
	if err == nil || !strings.Contains(err.Error(), "--worker-cmd") {
		t.Fatalf("got %v", err)
	}
}

func TestEnvironmentSetsFlags(t *testing.T) {
	t.Setenv("PROCFLEET_POOL_SIZE", "not-a-number")
	err := run([]string{"--worker-cmd", "x"})
	if err == nil || !strings.Contains(err.Error(), "PROCFLEET_POOL_SIZE") {
		t.Fatalf("want an error naming PROCFLEET_POOL_SIZE, got %v", err)
	}
}

// The poison bound and the timeout ceiling reach the agent's configuration
// from flags and from the environment; bad combinations are refused.
func TestPoisonAndTimeoutFlags(t *testing.T) {
	s := fleettest.StartServer(t)
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"job timeout over the ceiling", nil, []string{"--job-timeout", "2s", "--max-job-timeout", "1s"}, "JobTimeout 2s cannot exceed MaxJobTimeout 1s"},
		{"default ceiling", nil, []string{"--job-timeout", "2h"}, "cannot exceed MaxJobTimeout 1h0m0s"},
		{"ceiling from the environment", map[string]string{"PROCFLEET_MAX_JOB_TIMEOUT": "1s"}, []string{"--job-timeout", "2s"}, "cannot exceed MaxJobTimeout 1s"},
		{"bad ceiling", map[string]string{"PROCFLEET_MAX_JOB_TIMEOUT": "soon"}, nil, "PROCFLEET_MAX_JOB_TIMEOUT"},
		{"negative poison bound", nil, []string{"--poison-deaths", "-1"}, "PoisonDeaths cannot be negative"},
		{"poison bound from the environment", map[string]string{"PROCFLEET_POISON_DEATHS": "-2"}, nil, "PoisonDeaths cannot be negative"},
		{"negative cancel grace", nil, []string{"--cancel-grace", "-1s"}, "CancelGrace cannot be negative"},
		{"cancel grace from the environment", map[string]string{"PROCFLEET_CANCEL_GRACE": "-2s"}, nil, "CancelGrace cannot be negative"},
		{"no workers", nil, []string{"--pool-size", "0"}, "--pool-size must be at least 1, got 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			args := append([]string{"--nats", s.URL, "--worker-cmd", "python3 worker.py", "--log-level", "error"}, c.args...)
			err := run(args)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

// TestNameInUseRefused: cmd/agent started under the name of a live agent
// fails (main exits 1 with it) with an error naming the holder, instead of
// taking its leases.
func TestNameInUseRefused(t *testing.T) {
	srv := fleettest.StartServer(t)
	worker := []string{"python3", "../../examples/echo_worker.py"}
	cfg := agent.Config{Name: "x"}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command = worker
	holder, err := agent.New(srv.Connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := holder.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := holder.Stop(context.Background()); err != nil {
			t.Errorf("stop the holder: %v", err)
		}
	})
	errc := make(chan error, 1)
	go func() {
		errc <- run([]string{"--nats", srv.URL, "--name", "x", "--pool-size", "1",
			"--worker-cmd", strings.Join(worker, " "), "--log-level", "error"})
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, agent.ErrNameInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
			t.Fatalf("run under a name in use: %v, want ErrNameInUse naming the holder's pid", err)
		}
		t.Logf("agent: %v", err)
	case <-time.After(30 * time.Second): // refused within about a heartbeat interval (1 s)
		// It started: stop it the way an operator would.
		if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		<-errc
		t.Fatal("cmd/agent started under a name a live agent holds")
	}
}
