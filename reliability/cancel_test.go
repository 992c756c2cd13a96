package reliability_test

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// A cancel is durable: recorded before its job exists, it survives a
// SIGKILL of the NATS server (JetStream on file storage), and an agent
// process started afterwards still ends the job "canceled" without running
// it, while an uncanceled job next to it runs.
func TestCancelSurvivesNATSKill(t *testing.T) {
	t.Parallel()
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	data := t.TempDir()
	srv := startServerProc(t, "nats-c1", url, data)
	client := connectClient(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := client.Cancel(ctx, "durable-1"); err != nil {
		t.Fatal(err)
	}
	srv.kill()
	startServerProc(t, "nats-c2", url, data)

	execLog := filepath.Join(t.TempDir(), "exec.log")
	startAgentProc(t, url, "agent-c", 1, queue.DefaultPartitions, execLog)
	var ids []string
	for _, id := range []string{"durable-1", "durable-2"} {
		fleettest.Eventually(t, 30*time.Second, func() error {
			_, err := client.Submit(ctx, "dur", &queue.Job{ID: id, Command: "echo"})
			return err // the client may still be reconnecting
		})
		ids = append(ids, id)
	}
	results := waitResults(t, client.Topology(), ids, time.Minute)
	if r := results["durable-1"]; r.OK || r.Error == nil || r.Error.Kind != queue.KindCanceled {
		t.Fatalf("durable-1: %+v (error %+v), want canceled", r, r.Error)
	}
	if r := results["durable-2"]; !r.OK {
		t.Fatalf("durable-2: %+v", r.Error)
	}
	execs := fleettest.ReadExecLog(t, execLog)
	if len(execs["durable-1"]) != 0 || len(execs["durable-2"]) != 1 {
		t.Fatalf("executions: %v; want only durable-2, once", execs)
	}
}
