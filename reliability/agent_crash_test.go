package reliability_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// waitLeases waits until the partitions are leased among owners as a
// settled fleet holds them (queue.Balanced: each partition leased by one of
// owners, each owner at its quota), and returns the owners by partition.
func waitLeases(t *testing.T, topo *queue.Topology, owners []string, timeout time.Duration) map[int]string {
	t.Helper()
	got := map[int]string{}
	fleettest.Eventually(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		leases, err := topo.LeaseOwners(ctx)
		if err != nil {
			return err
		}
		got = map[int]string{}
		for p, l := range leases {
			got[p] = l.Owner
		}
		return queue.Balanced(topo.Config.Partitions, owners, got)
	})
	return got
}

// TestAgentCrash SIGKILLs one of three agent processes while they work
// through a backlog. Everything but the test runs as it would in
// production: `dispatcher serve --embedded` as the server, with the default
// topology (64 partitions, default TTLs), and cmd/agent processes. The
// victim's partitions must move to the survivors within 10s, every job it
// held must run again elsewhere, none may be lost, and its workers must die
// with it.
func TestAgentCrash(t *testing.T) {
	t.Parallel()
	f := startAgentFleet(t)
	topo, procs, execLog, client := f.topo, f.procs, f.execLog, f.client
	// The victim is the agent with the most partitions, so that it has a
	// backlog of session jobs when it dies.
	count := map[string]int{}
	for _, o := range f.owners {
		count[o]++
	}
	victim := slices.MaxFunc(f.names, func(a, b string) int { return count[a] - count[b] })
	held, survivors := f.held(victim)

	workers := childrenOf(procs[victim].pid())
	if len(workers) != 2 {
		t.Fatalf("victim has %d worker processes, want 2: %v", len(workers), workers)
	}
	col, err := client.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = col.Close() })
	w := workload{prefix: "ac", sessions: 40, perSession: 8, anonymous: 80, command: "sleep", payload: `{"ms":200}`}
	ids := w.submit(t, client)
	// Kill the victim once it has finished a job (so the test sees it
	// worked) and while one of its workers runs another.
	fleettest.Eventually(t, 60*time.Second, func() error {
		for _, id := range ids {
			if r, _, ok := col.Result(id); ok && r.Agent == victim {
				return nil
			}
		}
		return errors.New("no result from the victim yet")
	})
	f.waitRunningOn(t, col, workers)

	killed := time.Now()
	procs[victim].kill()
	// Its workers die with it (parent-death signal), leaving no orphans.
	waitGone(t, workers, 5*time.Second)
	orphansGone := time.Since(killed)

	// Failover: every partition it held is leased by a survivor.
	failover := f.waitTakenOver(t, held, survivors, killed)
	t.Logf("agent SIGKILL: %d partitions moved to the survivors in %s (workers gone after %s)",
		len(held), failover.Round(time.Millisecond), orphansGone.Round(time.Millisecond))
	if failover > 10*time.Second {
		t.Errorf("failover took %s, want at most 10s", failover)
	}

	results := waitResults(t, topo, ids, 2*time.Minute)
	if !slices.ContainsFunc(ids, func(id string) bool { return results[id].Agent == victim }) {
		t.Fatal("no job ran on the victim before it died")
	}
	requireOK(t, results)

	// Every job the victim had started and not finished ran again on a
	// survivor.
	execs := fleettest.ReadExecLog(t, execLog)
	victimPIDs := map[int]bool{}
	for _, pid := range workers {
		victimPIDs[pid] = true
	}
	var cutShort, unacked []string
	var rerunDone time.Duration
	for _, id := range ids {
		r := results[id]
		runs := execs[id]
		for i, e := range runs {
			switch {
			case !victimPIDs[e.PID]:
			case r.Agent == victim && r.WorkerPID == e.PID:
				// The victim stored this result; it died before the ack,
				// so the job ran again and that result was dropped as a
				// duplicate.
				if i < len(runs)-1 {
					unacked = append(unacked, id)
				}
			default:
				cutShort = append(cutShort, id)
				rerunDone = max(rerunDone, r.FinishedAt.Sub(killed))
				if r.Agent == victim || r.Attempt <= e.Attempt {
					t.Errorf("job %s ran on the victim (attempt %d) and was not rerun elsewhere: result %+v", id, e.Attempt, r)
				}
			}
		}
	}
	st := summarizeExecs(execs, ids)
	t.Logf("%d jobs, 0 lost; %d cut short by the kill and rerun on a survivor, all done %s after the kill; "+
		"%d executions; %d jobs ran twice: %d cut short, %d finished but not acked when the victim died",
		len(ids), len(cutShort), rerunDone.Round(time.Millisecond), st.executions, len(st.repeated), len(cutShort), len(unacked))
	if len(cutShort) == 0 {
		t.Errorf("the victim held no running job when it was killed; the test proves nothing")
	}
	for _, id := range st.repeated {
		if !slices.Contains(cutShort, id) && !slices.Contains(unacked, id) {
			t.Errorf("job %s ran more than once for no reason the kill explains: runs %+v, result from %s/%d attempt %d",
				id, execs[id], results[id].Agent, results[id].WorkerPID, results[id].Attempt)
		}
	}
	moves := checkSessions(t, results, func(agent string, _ int) bool { return agent == victim })
	t.Logf("%d sessions moved off the victim, each to a fresh binding with new_session=true", moves)
}
