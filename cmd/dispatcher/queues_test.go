package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestQueueAddAndSubmitWait: submitting to a queue that does not exist says
// how to make it; `queue add` declares it with limits; `submit --queue
// --wait` to a queue nobody serves says so, while an agent serves another
// queue; `queue list` shows the limits.
func TestQueueAddAndSubmitWait(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	cfg.Agent.Pool.Size = 1
	f := fleettest.StartFleet(t, cfg) // one agent, serving the default queue
	url := f.Server.URL

	_, _, err := runCmd(t, "submit", "--nats", url, "--queue", "gpu", "--command", "embed")
	if err == nil || !strings.Contains(err.Error(), "dispatcher queue add gpu") {
		t.Fatalf("submit to a missing queue: %v", err)
	}
	if _, _, err := runCmd(t, "queue", "add", "any", "--nats", url); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("queue add any: %v", err)
	}
	out, _, err := runCmd(t, "queue", "add", "gpu", "--nats", url, "--max-msgs", "100", "--max-bytes", "1MiB")
	if err != nil || !strings.Contains(out, "FLEET_JOBS_gpu") || !strings.Contains(out, "fleet.job.gpu.any") {
		t.Fatalf("queue add: %q, %v", out, err)
	}
	// Declaring it again updates its limits; its storage is fixed.
	if _, _, err := runCmd(t, "queue", "add", "gpu", "--nats", url, "--max-msgs", "100", "--max-bytes", "1MiB"); err != nil {
		t.Fatalf("queue add again: %v", err)
	}
	if _, _, err := runCmd(t, "queue", "add", "gpu", "--nats", url, "--storage", "memory"); err == nil || !strings.Contains(err.Error(), "Storage") {
		t.Fatalf("queue add with another storage: %v", err)
	}
	_, stderr, err := runCmd(t, "submit", "--nats", url, "--queue", "gpu", "--command", "embed", "--id", "e1", "--wait", "--wait-timeout", "3s")
	if err == nil {
		t.Fatal("want an error: nothing serves gpu")
	}
	if !strings.Contains(stderr, "no agent serves queue gpu") || !strings.Contains(stderr, "job e1 is queued") {
		t.Fatalf("stderr does not say that no agent serves the queue:\n%s", stderr)
	}
	out, _, err = runCmd(t, "queue", "list", "--nats", url)
	if err != nil {
		t.Fatal(err)
	}
	var gpuLine string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "gpu ") {
			gpuLine = l
		}
	}
	if f := strings.Fields(gpuLine); len(f) < 8 || f[2] != "1" || f[3] != "0" || f[5] != "100" || f[6] != "1048576" {
		t.Fatalf("queue list line for gpu %q in:\n%s", gpuLine, out)
	}
	// The default queue is unchanged by all this.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatcher.NewClient(ctx, f.NC, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitAndWait(ctx, "s1", &queue.Job{Command: "echo"}); err != nil {
		t.Fatal(err)
	}
}
