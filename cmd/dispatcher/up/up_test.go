package up_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/cmd/dispatcher/up"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// children returns the pids whose parent is pid.
func children(t *testing.T, pid int) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestUpRunsAgentProcessesAndLeavesNoOrphans(t *testing.T) {
	t.Parallel()
	worker, err := localfleet.FindExample("echo_worker.py")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	type ready struct {
		url  string
		pids []int
	}
	readyc := make(chan ready, 1)
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- up.Run(ctx, up.Config{
			Agents: 2, Port: -1, DataDir: t.TempDir(), Out: &out,
			AgentArgs: []string{"--worker-cmd", "python3 " + strconv.Quote(worker), "--pool-size", "1", "--log-level", "warn"},
			Ready:     func(url string, pids []int) { readyc <- ready{url, pids} },
		})
	}()
	var r ready
	select {
	case r = <-readyc:
	case err := <-done:
		t.Fatalf("up ended early: %v\n%s", err, out.String())
	}
	if len(r.pids) != 2 {
		t.Fatalf("agent pids %v", r.pids)
	}
	var procs []int
	for _, pid := range r.pids {
		procs = append(procs, pid)
		procs = append(procs, children(t, pid)...)
	}
	if len(procs) < 4 {
		t.Fatalf("want 2 agents with a worker each, found pids %v", procs)
	}

	nc, err := nats.Connect(r.url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	client, err := dispatcher.NewClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := client.SubmitAndWait(ctx, "up-1", &queue.Job{Command: "echo", Payload: json.RawMessage(`"hi"`)})
	if err != nil || !res.OK {
		t.Fatalf("job through the local stack: %+v %v", res, err)
	}

	cancel() // as Ctrl-C does
	if err := <-done; err != nil {
		t.Fatalf("up: %v", err)
	}
	for _, pid := range procs {
		if alive(pid) {
			// A zombie would still answer kill 0; the agents are reaped by
			// Up and the workers by their agents, so alive means orphaned.
			t.Errorf("process %d survived the stack", pid)
		}
	}
	if !strings.Contains(out.String(), "stopping agents") {
		t.Errorf("output:\n%s", out.String())
	}
	fmt.Fprint(os.Stderr, "")
}
