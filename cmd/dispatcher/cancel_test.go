package main

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// `dispatcher cancel` records cancels (several ids; flags anywhere), says
// when a job had finished, and --wait prints the canceled result of a job
// that was running.
func TestCancelCommand(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	cfg.Agent.Pool.Size = 1
	cfg.Agent.CancelGrace = 200 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	url := f.Server.URL

	out, _, err := runCmd(t, "submit", "--nats", url, "--command", "echo", "--id", "cli-done", "--wait")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err = runCmd(t, "cancel", "cli-done", "cli-later", "--nats", url)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "cli-done: already finished") || !strings.Contains(out, "cli-later: cancel recorded") {
		t.Fatalf("cancel output:\n%s", out)
	}

	if _, _, err := runCmd(t, "submit", "--nats", url, "--command", "sleep", "--payload", `{"ms":60000}`, "--id", "cli-run", "--timeout", "2m"); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		if f.Agents[0].Pool().Stats().Busy == 0 {
			return errors.New("not running yet")
		}
		return nil
	})
	out, _, err = runCmd(t, "cancel", "--nats", url, "--wait", "cli-run")
	if err != nil {
		t.Fatal(err)
	}
	var r queue.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.OK || r.Error == nil || r.Error.Kind != queue.KindCanceled {
		t.Fatalf("cancel --wait printed %s (%v)", out, err)
	}

	if _, _, err := runCmd(t, "cancel", "--nats", url); err == nil || !strings.Contains(err.Error(), "at least one job id") {
		t.Fatalf("no id: %v", err)
	}
	if _, _, err := runCmd(t, "cancel", "--nats", url, "a.b"); err == nil || !strings.Contains(err.Error(), "a.b") {
		t.Fatalf("bad id: %v", err)
	}
}
