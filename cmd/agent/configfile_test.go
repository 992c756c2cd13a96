package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestConfigFileExample: the documented example loads into one pool per
// queue with every key applied.
func TestConfigFileExample(t *testing.T) {
	qs, err := loadConfigFile("../../examples/agent-queues.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 || qs[0].Name != "programs" || qs[1].Name != "echo" {
		t.Fatalf("queues: %+v", qs)
	}
	p := qs[0]
	if !slices.Equal(p.Pool.Worker.Command, []string{"python3", "examples/programs_worker.py"}) || p.Pool.Size != 4 || p.Capacity != 8 ||
		p.Pool.MaxRSS != 1<<30 || p.Pool.SessionIdleTTL != 30*time.Minute || p.Pool.Worker.StartupTimeout != 30*time.Second ||
		p.Limits.MaxMsgs != 100000 || p.Limits.MaxBytes != 1<<30 || p.Limits.Storage != "file" || p.Limits.Replicas != 1 {
		t.Fatalf("programs: %+v", p)
	}
	if e := qs[1]; !slices.Equal(e.Pool.Worker.Command, []string{"python3", "examples/echo_worker.py"}) || e.Pool.Size != 2 {
		t.Fatalf("echo: %+v", e)
	}
}

// TestConfigFileErrors: each mistake is refused with the file, the queue and
// the key named; --config and the single-pool flags do not mix.
func TestConfigFileErrors(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"unknown key", "queues:\n  - queue: a\n    worker_cmd: w\n    pool_sise: 2\n", "pool_sise"},
		{"reserved name", "queues:\n  - queue: any\n    worker_cmd: w\n", "reserved"},
		{"bad name", "queues:\n  - queue: a.b\n    worker_cmd: w\n", "[A-Za-z0-9_-]"},
		{"no command", "queues:\n  - queue: a\n", "queues[0] (a): worker_cmd is required"},
		{"bad duration", "queues:\n  - queue: a\n    worker_cmd: w\n    ttl: soon\n", "ttl"},
		{"bad size", "queues:\n  - queue: a\n    worker_cmd: w\n    max_rss: lots\n", "max_rss"},
		{"bad storage", "queues:\n  - queue: a\n    worker_cmd: w\n    limits: {storage: tape}\n", "Storage"},
		{"no queues", "queues: []\n", "no queues"},
		{"empty", "", "the file is empty"},
		{"twice", "queues:\n  - queue: a\n    worker_cmd: w\n  - queue: a\n    worker_cmd: w\n", "listed twice"},
		{"no workers", "queues:\n  - queue: a\n    worker_cmd: w\n    pool_size: 0\n", "pool_size must be at least 1, got 0"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "q.yaml")
			if err := os.WriteFile(path, []byte(c.body), 0o600); err != nil {
				t.Fatal(err)
			}
			err := run([]string{"--nats", "nats://127.0.0.1:1", "--config", path, "--log-level", "error"})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
	// From the environment (a shared agent.env) they are ignored.
	t.Setenv("PROCFLEET_WORKER_CMD", "python3 other.py")
	path := filepath.Join(t.TempDir(), "ok.yaml")
	if err := os.WriteFile(path, []byte("queues:\n  - queue: a\n    worker_cmd: w\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"--nats", "nats://127.0.0.1:1", "--config", path, "--log-level", "error"}); err == nil || !strings.Contains(err.Error(), "cannot reach NATS") {
		t.Fatalf("--config with PROCFLEET_WORKER_CMD set: %v, want it to get as far as connecting", err)
	}
	err := run([]string{"--config", "x.yaml", "--worker-cmd", "w", "--pool-size", "2"})
	if err == nil || !strings.Contains(err.Error(), "--worker-cmd, --pool-size belong in the file") {
		t.Fatalf("--config with --worker-cmd: %v", err)
	}
}
