package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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
