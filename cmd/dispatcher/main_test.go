package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

func TestMain(m *testing.M) { sharedtest.TestMain(m) }

func runCmd(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestUnreachableNATSNamesURL(t *testing.T) {
	t.Parallel()
	_, _, err := runCmd(t, "status", "--nats", "nats://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "nats://127.0.0.1:1") {
		t.Fatalf("want an error naming the URL, got %v", err)
	}
}

func TestNoTopologySaysSo(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	_, _, err := runCmd(t, "submit", "--nats", s.URL, "--command", "echo")
	if err == nil || !strings.Contains(err.Error(), "topology") {
		t.Fatalf("want a clear no-topology error, got %v", err)
	}
}

func TestSubmitWaitWithoutAgentSaysQueued(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	nc := s.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dispatcher.EnsureClient(ctx, nc, queue.Config{}); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runCmd(t, "submit", "--nats", s.URL, "--command", "echo", "--id", "lonely", "--wait", "--wait-timeout", "2s")
	if err == nil {
		t.Fatal("want an error: nothing can run the job")
	}
	if !strings.Contains(stderr, "no agent is registered") || !strings.Contains(stderr, "lonely is queued") {
		t.Fatalf("stderr does not say that no agent runs and the job is queued:\n%s", stderr)
	}
}

func TestSubmitStatusDLQ(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	cfg.Agent.Pool.Size = 1
	cfg.Agent.RetryBackoffMin = 20 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	url := f.Server.URL

	out, _, err := runCmd(t, "submit", "--nats", url, "--session", "cli", "--command", "echo", "--payload", `{"a":1}`, "--wait")
	if err != nil {
		t.Fatal(err)
	}
	var r queue.Result
	var compact bytes.Buffer
	if err := json.Unmarshal([]byte(out), &r); err != nil || !r.OK || json.Compact(&compact, r.Result) != nil || compact.String() != `{"a":1}` {
		t.Fatalf("submit --wait printed %q (%v)", out, err)
	}

	// A poison job: exit status 2 and a dead letter.
	_, _, err = runCmd(t, "submit", "--nats", url, "--command", "crash", "--id", "dead-1", "--max-attempts", "2", "--wait")
	if err == nil {
		t.Fatal("want a non-zero exit for a failed job")
	}
	out, _, err = runCmd(t, "dlq", "list", "--nats", url)
	if err != nil || !strings.Contains(out, "dead-1") {
		t.Fatalf("dlq list: %v\n%s", err, out)
	}

	out, _, err = runCmd(t, "status", "--nats", url, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st dispatcher.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Agents) != 1 || st.DeadLetters != 1 {
		t.Fatalf("status: %d agents, %d dead letters", len(st.Agents), st.DeadLetters)
	}
	out, _, err = runCmd(t, "status", "--nats", url)
	if err != nil || !strings.Contains(out, "agent-1") {
		t.Fatalf("status table: %v\n%s", err, out)
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	_, stderr, err := runCmd(t, "frobnicate")
	if err == nil || !strings.Contains(stderr, "Usage") {
		t.Fatalf("want usage and an error, got %v", err)
	}
}

// TestFlagsAfterArguments: `dlq replay 1 --nats URL` uses URL (the flags
// after a positional argument were once ignored), and a command that takes
// no argument refuses one.
func TestFlagsAfterArguments(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	cfg.Agent.Pool.Size = 1
	cfg.Agent.RetryBackoffMin = 20 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	url := f.Server.URL

	if _, _, err := runCmd(t, "submit", "--command", "crash", "--id", "late-flags", "--max-attempts", "1", "--wait", "--nats", url); err == nil {
		t.Fatal("want a non-zero exit for a failed job")
	}
	out, _, err := runCmd(t, "dlq", "list", "--json", "--nats", url)
	if err != nil {
		t.Fatalf("dlq list with flags after list: %v", err)
	}
	var entries []queue.DeadLetterEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil || len(entries) != 1 {
		t.Fatalf("dlq list --json: %v\n%s", err, out)
	}
	seq := strconv.FormatUint(entries[0].Seq, 10)
	out, _, err = runCmd(t, "dlq", "replay", seq, "--nats", url, "--prefix", "fleet")
	if err != nil || !strings.Contains(out, "replayed "+seq) {
		t.Fatalf("dlq replay %s --nats URL: %v\n%s", seq, err, out)
	}

	for _, args := range [][]string{
		{"submit", "--nats", url, "--command", "echo", "stray"},
		{"status", "--nats", url, "stray"},
		{"dlq", "list", "--nats", url, "7"},
	} {
		if _, _, err := runCmd(t, args...); err == nil || !strings.Contains(err.Error(), "unexpected argument") {
			t.Errorf("%q: err = %v, want an unexpected-argument error", args, err)
		}
	}
	for _, args := range [][]string{
		{"dlq", "replay", "--nats", url},
		{"dlq", "replay", "x", "--nats", url},
		{"dlq", "frob", "--nats", url},
		// An explicit 0 must not quietly become the default.
		{"demo", "--sessions", "0"},
		{"demo", "--workers", "0"},
		{"bench", "--jobs", "0"},
	} {
		if _, _, err := runCmd(t, args...); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

// TestServeHTTPFlags: the serve command's HTTP settings are checked before
// anything starts, with errors naming the flag.
func TestServeHTTPFlags(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	dir := t.TempDir()
	badFile := filepath.Join(dir, "tokens")
	if err := os.WriteFile(badFile, []byte("short submit\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A store another process (here: this test) holds.
	held := t.TempDir()
	unlock, err := embedded.LockStore(held)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"--http", "0.0.0.0:0"}, "without a token"},
		{[]string{"--http", "127.0.0.1:0", "--http-token-file", badFile}, "--http-token-file"},
		{[]string{"--http", "127.0.0.1:0", "--http-token-file", filepath.Join(dir, "missing")}, "--http-token-file"},
		{[]string{"--http", "127.0.0.1:0", "--http-token", "short"}, "--http-token"},
		{[]string{"--http", "127.0.0.1:0", "--http-tls-cert", badFile}, "--http-tls-key"},
		{[]string{"--embedded", "--listen", "0.0.0.0:0", "--data", dir}, "loopback only"},
		{[]string{"--embedded", "--listen", "192.0.2.1:0", "--data", dir}, "loopback only"},
		{[]string{"--embedded", "--listen", "127.0.0.1:0", "--data", held}, "in use"},
	} {
		args := append([]string{"serve", "--nats", s.URL}, tc.args...)
		if _, _, err := runCmd(t, args...); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%q: err = %v, want one saying %q", args, err, tc.says)
		}
	}
}

// TestHelpIsNotAnError: asking a command for its usage prints it and is no
// failure (main exits 0 on flag.ErrHelp).
func TestHelpIsNotAnError(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"queue", "--help"}, {"queue", "add", "-h"}, {"submit", "--help"}} {
		_, stderr, err := runCmd(t, args...)
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr, "Usage") {
			t.Errorf("%q: err %v, stderr %q; want flag.ErrHelp and the usage", args, err, stderr)
		}
	}
}
