package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestScheduleCommands: schedule add/list/rm, submit --in/--at and the
// deadline flags, and their errors, as a user types them.
func TestScheduleCommands(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dispatcher.EnsureClient(ctx, s.Connect(t), queue.Config{Schedules: true}); err != nil {
		t.Fatal(err)
	}
	url := s.URL
	for _, tc := range []struct {
		args    []string
		out     string // in stdout on success
		errSays string // in the error; "" means success
	}{
		{[]string{"schedule", "add", "nightly", "--cron", "0 2 * * *", "--session", "s1", "--command", "echo"}, "schedule nightly added", ""},
		{[]string{"schedule", "add", "nightly", "--every", "1h", "--command", "echo"}, "", "schedule exists"},
		{[]string{"schedule", "add", "nightly", "--every", "1h", "--command", "echo", "--replace"}, "added", ""},
		{[]string{"schedule", "add", "x", "--cron", "0 2 * *", "--command", "echo"}, "", "4 fields"},
		{[]string{"schedule", "add", "x", "--every", "1h", "--cron", "0 2 * * *", "--command", "echo"}, "", "not both"},
		{[]string{"schedule", "add", "x", "--every", "1h"}, "", "--command is required"},
		{[]string{"schedule", "add", "--every", "1h", "--command", "echo"}, "", "exactly one NAME"},
		{[]string{"schedule", "list"}, "@every 1h0m0s", ""},
		{[]string{"schedule", "frob"}, "", "unknown subcommand"},
		{[]string{"submit", "--command", "echo", "--in", "1h", "--id", "later"}, "later", ""},
		{[]string{"submit", "--command", "echo", "--in", "soon"}, "", "--in \"soon\""},
		{[]string{"submit", "--command", "echo", "--at", "2001-01-01T00:00:00Z"}, "", "in the past"},
		{[]string{"submit", "--command", "echo", "--at", "2030-01-01T00:00:00Z", "--in", "1s"}, "", "one of --at and --in"},
		{[]string{"submit", "--command", "echo", "--expires-at", "noon"}, "", "expires_at"},
		{[]string{"status"}, "DELAYED JOB", ""},
		{[]string{"schedule", "rm", "nightly"}, "removed", ""},
		{[]string{"schedule", "rm", "nightly"}, "", "schedule not found"},
	} {
		out, _, err := runCmd(t, append(tc.args, "--nats", url)...)
		switch {
		case tc.errSays == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.errSays == "" && !strings.Contains(out, tc.out):
			t.Errorf("%v printed %q, want %q", tc.args, out, tc.out)
		case tc.errSays != "" && (err == nil || !strings.Contains(err.Error(), tc.errSays)):
			t.Errorf("%v: error %v, want one saying %q", tc.args, err, tc.errSays)
		}
	}
	out, _, err := runCmd(t, "schedule", "list", "--json", "--nats", url)
	var list []queue.ScheduleInfo
	if err != nil || json.Unmarshal([]byte(out), &list) != nil || len(list) != 0 {
		t.Fatalf("schedule list --json after rm: %v %q", err, out)
	}
}
