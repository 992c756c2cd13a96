package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/execlog"
	"github.com/procfleet/procfleet/queue"
)

func TestChaosConfigErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := Run(ctx, Config{Agents: -1, AnonymousShare: 2, Payload: json.RawMessage(`{`)})
	if !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("got %v, want ErrInvalidConfig", err)
	}
	for _, field := range []string{"WorkerCmd", "Agents", "AnonymousShare", "Payload"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error %q does not name %s", err, field)
		}
	}
}

// TestChaosTracing checks the reconciliation on a made-up run: each move of
// a session is traced to the fault behind it, and failovers are timed from
// the lease history.
func TestChaosTracing(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}.WithDefaults()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ps, pt := cfg.PartitionOf("s"), cfg.PartitionOf("t")
	r := &chaosRun{
		cfg:  Config{Agents: 2},
		topo: &queue.Topology{Config: cfg},
		jobs: map[string]*chaosJob{
			"s1": {ID: "s1", Session: "s", Seq: 1}, "s2": {ID: "s2", Session: "s", Seq: 2},
			"s3": {ID: "s3", Session: "s", Seq: 3}, "s4": {ID: "s4", Session: "s", Seq: 4},
			"t1": {ID: "t1", Session: "t", Seq: 5}, "t2": {ID: "t2", Session: "t", Seq: 6},
		},
		killedPIDs: map[int]string{100: "worker killed"},
		events: []chaosEvent{
			{At: at(0), Kind: "agent-start", Agent: "agent-1"},
			{At: at(0), Kind: "agent-start", Agent: "agent-2"},
			{At: at(1000), Kind: "agent-kill", Agent: "agent-1"},
			{At: at(6000), Kind: "agent-start", Agent: "agent-1"},
		},
		kills: []agentKill{{at: at(1000), agent: "agent-1", partitions: []int{3, 5}}},
		leaseLog: []leaseChange{
			// The session s's partition moves to agent-2 between s3 and s4.
			{at: at(450), partition: ps, owner: "agent-2", changed: true},
			// A renewal that was in flight when agent-1 died.
			{at: at(1010), partition: 3, owner: "agent-1"},
			{at: at(4000), partition: 3, owner: "agent-2", changed: true},
			// Agent-1 comes back under its old name and takes 5 over.
			{at: at(6500), partition: 5, owner: "agent-1"},
		},
	}
	if ps == pt {
		t.Fatalf("sessions s and t share partition %d; pick other names", ps)
	}
	res := func(id, agent string, pid int, start, end int, fresh bool) *queue.Result {
		return &queue.Result{ID: id, OK: true, Agent: agent, WorkerPID: pid, StartedAt: at(start), FinishedAt: at(end), NewSession: fresh}
	}
	final := map[string]*queue.Result{
		"s1": res("s1", "agent-1", 100, 0, 10, true),
		"s2": res("s2", "agent-1", 100, 10, 20, false),
		"s3": res("s3", "agent-1", 101, 300, 400, true),    // pid 100 was killed
		"s4": res("s4", "agent-2", 200, 800, 900, true),    // partition moved at 450
		"t1": res("t1", "agent-1", 101, 0, 10, true),       //
		"t2": res("t2", "agent-2", 201, 5000, 5010, false), // nothing explains it
	}
	rep := &Report{BreaksByCause: map[string]int{}}
	r.traceAffinity(rep, final, nil)
	if rep.AffinityBreaks != 3 || rep.BreaksByCause["worker killed"] != 1 || rep.BreaksByCause["rebalance"] != 1 || rep.Untraced != 1 {
		t.Errorf("breaks %d by cause %v untraced %d; want 3: worker killed 1, rebalance 1, untraced 1",
			rep.AffinityBreaks, rep.BreaksByCause, rep.Untraced)
	}
	if rep.RebindWithoutNewSession != 1 {
		t.Errorf("%d rebinds without new_session, want 1 (t2)", rep.RebindWithoutNewSession)
	}
	// With the execution log, t2's binding is excused: t1 also ran on
	// 201 (a rerun whose result was dropped as a duplicate).
	rep = &Report{BreaksByCause: map[string]int{}}
	r.traceAffinity(rep, final, map[string][]execlog.Execution{"t1": {{Attempt: 1, PID: 101}, {Attempt: 2, PID: 201}}})
	if rep.RebindWithoutNewSession != 0 {
		t.Errorf("%d rebinds without new_session, want 0 (t2's is explained by t1's rerun)", rep.RebindWithoutNewSession)
	}

	execs := map[string][]execlog.Execution{
		"s1": {{Attempt: 1, PID: 100, Line: 0}}, "s2": {{Attempt: 1, PID: 100, Line: 1}, {Attempt: 2, PID: 101, Line: 4}},
		"s3": {{Attempt: 1, PID: 101, Line: 3}}, "s4": {{Attempt: 1, PID: 200, Line: 5}},
	}
	if n := r.countReordered(final, execs); n != 1 {
		t.Errorf("%d reordered, want 1 (s3 ran before s2's retry)", n)
	}
	if n := r.countReordered(final, nil); n != -1 {
		t.Errorf("without an execution log: %d, want -1", n)
	}

	r.timeFailovers(rep)
	if len(rep.Failovers) != 1 || rep.LongestFailover != 5500*time.Millisecond {
		t.Errorf("failovers %v longest %s; want one of 5.5s (partition 5 back with agent-1)", rep.Failovers, rep.LongestFailover)
	}
}

// TestRunChaosShort is a few seconds of chaos on two agents: nothing lost,
// every fault accounted for, and a report.
func TestRunChaosShort(t *testing.T) {
	t.Parallel()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	argv, env := testworker.Command(testworker.ExecLog(execLog))
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{
		Duration: 3 * time.Second, Agents: 2, Workers: 2, Rate: 80, Seed: 7,
		FaultInterval: 300 * time.Millisecond, AgentFaultShare: 0.3, MaxDownTime: 2 * time.Second,
		WorkerCmd: argv, WorkerEnv: env, ExecLog: execLog,
		Command: "sleep", Payload: json.RawMessage(`{"ms":5}`),
		Out: &out, Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)),
	})
	t.Log(out.String())
	if errors.Is(err, ErrJobsLost) || (rep != nil && rep.Lost > 0) {
		t.Fatalf("jobs lost: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if rep.Accepted == 0 || rep.WorkerKills+rep.AgentKills == 0 || !rep.ExecCounted {
		t.Errorf("report %+v: want load, faults and counted executions", rep)
	}
	if rep.Untraced != 0 || rep.RebindWithoutNewSession != 0 {
		t.Errorf("untraced breaks %d, rebinds without new_session %d", rep.Untraced, rep.RebindWithoutNewSession)
	}
	for _, want := range []string{"procfleet chaos report (seed 7)", "lost:              0", "affinity breaks:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
