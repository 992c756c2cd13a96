package reliability_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
)

// TestAgentSIGTERMUnderLoad stops one of three agent processes with SIGTERM
// while they work through a backlog: a graceful stop. The agent finishes the
// jobs it is running, hands back the ones it holds but has not started, and
// releases its partitions, so the survivors take them at once. Nothing is
// lost and, unlike a crash, nothing runs twice.
func TestAgentSIGTERMUnderLoad(t *testing.T) {
	t.Parallel()
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	startServerProc(t, "nats", url, t.TempDir())
	client := connectClient(t, url)
	topo := client.Topology()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	names := []string{"agent-a", "agent-b", "agent-c"}
	procs := map[string]*proc{}
	for _, n := range names {
		procs[n] = startAgentProc(t, url, n, 2, topo.Config.Partitions, execLog)
	}
	owners := waitLeases(t, topo, names, 60*time.Second)
	victim := names[1]
	var survivors []string
	for _, n := range names {
		if n != victim {
			survivors = append(survivors, n)
		}
	}
	var held []int
	for p, o := range owners {
		if o == victim {
			held = append(held, p)
		}
	}
	workers := childrenOf(procs[victim].pid())

	col, err := client.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = col.Close() })
	w := workload{prefix: "gt", sessions: 40, perSession: 8, anonymous: 80, command: "sleep", payload: `{"ms":100}`}
	ids := w.submit(t, client)
	// Stop the victim while one of its workers runs a job.
	fleettest.Eventually(t, 60*time.Second, func() error {
		for id, runs := range fleettest.ReadExecLog(t, execLog) {
			last := runs[len(runs)-1]
			if _, _, done := col.Result(id); !done && slices.Contains(workers, last.PID) {
				return nil
			}
		}
		return errors.New("no job running on the victim")
	})
	stopped := time.Now()
	procs[victim].stop(60 * time.Second)
	if !procs[victim].exited() {
		t.Fatal("the agent did not exit after SIGTERM")
	}
	if code := procs[victim].cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the agent exited with status %d after SIGTERM, want 0", code)
	}
	stopTook := time.Since(stopped)
	waitGone(t, workers, 5*time.Second)

	// Released leases are taken at once, not after the lease TTL.
	var handover time.Duration
	fleettest.Eventually(t, 30*time.Second, func() error {
		now, err := topo.LeaseOwners(t.Context())
		if err != nil {
			return err
		}
		for _, p := range held {
			if l, ok := now[p]; !ok || !slices.Contains(survivors, l.Owner) {
				return fmt.Errorf("partition %d not yet taken over (lease %+v)", p, l)
			}
		}
		handover = time.Since(stopped)
		return nil
	})

	results := waitResults(t, topo, ids, 2*time.Minute)
	requireOK(t, results)
	if !slices.ContainsFunc(ids, func(id string) bool { return results[id].Agent == victim }) {
		t.Fatal("no job ran on the victim before it stopped")
	}
	execs := fleettest.ReadExecLog(t, execLog)
	st := summarizeExecs(execs, ids)
	for _, id := range st.repeated {
		t.Errorf("job %s ran more than once across a graceful stop: %+v", id, execs[id])
	}
	for _, id := range ids {
		if len(execs[id]) == 0 {
			t.Errorf("job %s has a result but never ran", id)
		}
	}
	t.Logf("agent SIGTERM: stopped in %s, %d partitions on the survivors %s after the signal; %d jobs, 0 lost, %d executions, none twice",
		stopTook.Round(time.Millisecond), len(held), handover.Round(time.Millisecond), len(ids), st.executions)
	checkSessions(t, results, func(agent string, _ int) bool { return agent == victim })
}
