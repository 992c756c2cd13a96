package reliability_test

import (
	"slices"
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
	f := startAgentFleet(t)
	victim := f.names[1]
	held, survivors := f.held(victim)
	workers := childrenOf(f.procs[victim].pid())

	col, err := f.client.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = col.Close() })
	w := workload{prefix: "gt", sessions: 40, perSession: 8, anonymous: 80, command: "sleep", payload: `{"ms":100}`}
	ids := w.submit(t, f.client)
	f.waitRunningOn(t, col, workers)
	stopped := time.Now()
	f.procs[victim].stop(60 * time.Second)
	if !f.procs[victim].exited() {
		t.Fatal("the agent did not exit after SIGTERM")
	}
	if code := f.procs[victim].cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("the agent exited with status %d after SIGTERM, want 0", code)
	}
	exited := time.Now()
	stopTook := exited.Sub(stopped)
	// Released leases are taken at once, not after a TTL: the survivors see
	// the agent leave the registry (their watch) and find its leases free.
	// Measured from its exit: 10-60 ms. Without the release they would wait
	// for its registry entry to expire (AgentTTL less up to a heartbeat
	// interval: 2-3 s) or for its leases to (LeaseTTL, 6 s).
	handover := f.waitTakenOver(t, held, survivors, exited)
	if handover > time.Second {
		t.Errorf("survivors took the partitions %s after the agent exited, want at most 1s (AgentTTL %s, LeaseTTL %s)",
			handover, f.topo.Config.AgentTTL, f.topo.Config.LeaseTTL)
	}
	waitGone(t, workers, 5*time.Second)

	results := waitResults(t, f.topo, ids, 2*time.Minute)
	requireOK(t, results)
	if !slices.ContainsFunc(ids, func(id string) bool { return results[id].Agent == victim }) {
		t.Fatal("no job ran on the victim before it stopped")
	}
	execs := fleettest.ReadExecLog(t, f.execLog)
	st := summarizeExecs(execs, ids)
	for _, id := range st.repeated {
		t.Errorf("job %s ran more than once across a graceful stop: %+v", id, execs[id])
	}
	for _, id := range ids {
		if len(execs[id]) == 0 {
			t.Errorf("job %s has a result but never ran", id)
		}
	}
	t.Logf("agent SIGTERM: stopped in %s, %d partitions on the survivors %s after it exited; %d jobs, 0 lost, %d executions, none twice",
		stopTook.Round(time.Millisecond), len(held), handover.Round(time.Millisecond), len(ids), st.executions)
	checkSessions(t, results, func(agent string, _ int) bool { return agent == victim })
}
