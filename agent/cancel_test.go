package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// cancelJob cancels id through the Go client.
func cancelJob(t *testing.T, f *fleettest.Fleet, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := f.Client.Cancel(ctx, id); err != nil {
		t.Fatalf("cancel %s: %v", id, err)
	}
}

// waitExecuted waits until the helper workers' execution log shows id.
func waitExecuted(t *testing.T, path, id string) {
	t.Helper()
	fleettest.Eventually(t, 30*time.Second, func() error {
		if len(fleettest.ReadExecLog(t, path)[id]) == 0 {
			return fmt.Errorf("job %s has not started", id)
		}
		return nil
	})
}

func wantCanceled(t *testing.T, r *queue.Result) {
	t.Helper()
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindCanceled {
		t.Fatalf("job %s: ok=%v error=%+v, want kind canceled", r.ID, r.OK, r.Error)
	}
}

// Done when "Cancel, queued": 100 slow jobs wait behind a busy pool; the 50
// canceled end "canceled" and no worker ever sees them (the execution log);
// the others run once each. Session jobs wait inside the agent (its
// capacity holds many), anonymous ones stay in the stream until a worker
// is free: both kinds are canceled.
func TestCancelQueued(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 2))
	cfg.Agent.Capacity = 60
	f := fleettest.StartFleet(t, cfg)
	col := collect(t, f)
	// Keep both workers busy while the queue fills and the cancels land.
	var blockers []string
	for i := range 2 {
		id := fmt.Sprintf("blocker-%d", i)
		col.Expect(id)
		blockers = append(blockers, submit(t, f, "", &queue.Job{ID: id, Command: "sleep", Payload: json.RawMessage(`{"ms":6000}`)}))
	}
	for _, id := range blockers {
		waitExecuted(t, execLog, id)
	}
	var all []string
	for i := range 100 {
		id := fmt.Sprintf("q-%03d", i)
		session := ""
		if i%2 == 0 {
			session = fmt.Sprintf("s%d", i%10)
		}
		col.Expect(id)
		all = append(all, submit(t, f, session, &queue.Job{ID: id, Command: "sleep", Payload: json.RawMessage(`{"ms":40}`)}))
	}
	// Both places a queued job can be: session jobs held by the agent,
	// waiting in the pool's line; anonymous ones still in the stream (the
	// agent takes those only for a free worker).
	var waiting int
	var inStream uint64
	fleettest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cons, err := f.Topology().AnyConsumer(ctx)
		if err != nil {
			return err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		waiting, inStream = f.Agents[0].Pool().Stats().Waiters, info.NumPending
		if waiting < 25 || inStream < 50 {
			return fmt.Errorf("%d jobs waiting in the agent, %d anonymous ones in the stream", waiting, inStream)
		}
		return nil
	})
	t.Logf("at cancel time: %d session jobs waiting in the agent, %d anonymous jobs in the stream", waiting, inStream)
	canceled := map[string]bool{}
	for i, id := range all {
		if i%4 < 2 { // half the session jobs, half the anonymous ones
			cancelJob(t, f, id)
			canceled[id] = true
		}
	}
	if execs := fleettest.ReadExecLog(t, execLog); len(execs) != 2 {
		t.Fatalf("jobs started before the blockers ended; the test did not queue them: %v", execs)
	}
	waitAll(t, col, 120*time.Second)
	execs := fleettest.ReadExecLog(t, execLog)
	for _, id := range all {
		r, _, _ := col.Result(id)
		if canceled[id] {
			wantCanceled(t, r)
			if n := len(execs[id]); n != 0 {
				t.Errorf("canceled job %s reached a worker %d times", id, n)
			}
			continue
		}
		if !r.OK {
			t.Errorf("job %s: %+v", id, r.Error)
		}
		if n := len(execs[id]); n != 1 {
			t.Errorf("job %s ran %d times", id, n)
		}
	}
	if got := f.Agents[0].Counters().Canceled; got != 50 {
		t.Errorf("agent counted %d canceled jobs, want 50", got)
	}
	t.Logf("50 of 100 queued jobs canceled; none reached a worker; %d executions in all", len(execs))
}

// pythonFleet is a one-agent fleet whose single worker runs a Python script.
func pythonFleet(t *testing.T, script string, grace time.Duration) *fleettest.Fleet {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for the Python SDK: %v", err)
	}
	cfg := fleetConfig(1, 1)
	cfg.Agent.Pool.Worker.Command = []string{python, script}
	cfg.Agent.CancelGrace = grace
	return fleettest.StartFleet(t, cfg)
}

func examplePath(t *testing.T, name string) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "examples", name)
}

// firstProgress returns a channel that receives once job id reports
// progress.
func firstProgress(t *testing.T, f *fleettest.Fleet, id string) <-chan struct{} {
	t.Helper()
	ch := make(chan struct{}, 1)
	sub, err := f.NC.Subscribe(f.Topology().Config.ProgressSubject(id), func(*nats.Msg) {
		select {
		case ch <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := f.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s within 30s", what)
	}
}

// Done when "Cancel, running": examples/slow_worker.py sleeping 60 s (in
// one-second steps) is canceled after its first second; it ends "canceled"
// within 3 s, and since the SDK stops the handler, the worker is not
// killed: the next job of the session runs on the same process.
func TestCancelRunningSlowWorker(t *testing.T) {
	t.Parallel()
	f := pythonFleet(t, examplePath(t, "slow_worker.py"), 0)
	progress := firstProgress(t, f, "slow-60s")
	submit(t, f, "py", &queue.Job{ID: "slow-60s", Command: "slow", Payload: json.RawMessage(`{"ms":60000,"steps":60}`), TimeoutMS: 120000})
	waitSignal(t, progress, "progress after 1 s")
	start := time.Now()
	cancelJob(t, f, "slow-60s")
	r := result(t, f, "slow-60s")
	took := time.Since(start)
	wantCanceled(t, r)
	t.Logf("canceled after its first progress; result %q after %v", r.Error.Message, took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("canceled job took %v to end, want under 3s", took)
	}
	if !strings.Contains(r.Error.Message, "stopped with Canceled") {
		t.Errorf("message %q: want the worker's own Canceled", r.Error.Message)
	}
	next := result(t, f, submit(t, f, "py", &queue.Job{ID: "slow-after", Command: "slow", Payload: json.RawMessage(`{"ms":1}`)}))
	if !next.OK || next.WorkerPID != r.WorkerPID || next.NewSession {
		t.Fatalf("next job: ok=%v pid %d new_session=%v; want ok on pid %d in the same session", next.OK, next.WorkerPID, next.NewSession, r.WorkerPID)
	}
	if st := f.Agents[0].Pool().Stats(); st.Removed != 0 || st.Restarts != 0 {
		t.Errorf("pool removed %d, restarted %d workers; want none", st.Removed, st.Restarts)
	}
}

const progressLoopWorker = `
import os, sys
sys.path.insert(0, %q)
import procfleet_worker as pw

@pw.handler("remember")
def remember(payload, session):
    session.state["value"] = payload
    return "ok"

@pw.handler("recall")
def recall(payload, session):
    return {"value": session.state.get("value"), "pid": os.getpid()}

@pw.handler("loop")
def loop(payload, session):
    # Busy: progress in a loop, never a sleep.
    i = 0
    while True:
        pw.progress({"i": i})
        i += 1

@pw.handler("stubborn")
def stubborn(payload, session):
    # Ignores the cancel: catches it and keeps on. Everything from the
    # "started" progress on is inside the try: the cancel the test sends on
    # that progress may interrupt any line after it.
    import time
    end = time.monotonic() + 60
    first = True
    while True:
        try:
            if first:
                first = False
                pw.progress("started")
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(left)
        except pw.Canceled:
            pass
    return "done"

if __name__ == "__main__":
    pw.run()
`

// Done when "Cancel, running", second half: a Python handler that calls
// progress() in a loop ends cleanly without being killed, and its session
// survives (same pid, state intact for the next job).
func TestCancelProgressLoopKeepsSession(t *testing.T) {
	t.Parallel()
	script := filepath.Join(t.TempDir(), "loop_worker.py")
	sdk := filepath.Join(filepath.Dir(filepath.Dir(examplePath(t, "x"))), "worker", "python")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(progressLoopWorker, sdk)), 0o644); err != nil {
		t.Fatal(err)
	}
	f := pythonFleet(t, script, 0)
	first := result(t, f, submit(t, f, "keep", &queue.Job{ID: "remember", Command: "remember", Payload: json.RawMessage(`42`)}))
	if !first.OK {
		t.Fatalf("remember: %+v", first.Error)
	}
	progress := firstProgress(t, f, "loop")
	submit(t, f, "keep", &queue.Job{ID: "loop", Command: "loop"})
	waitSignal(t, progress, "progress from the loop")
	start := time.Now()
	cancelJob(t, f, "loop")
	r := result(t, f, "loop")
	wantCanceled(t, r)
	t.Logf("progress loop canceled in %v: %s", time.Since(start).Round(time.Millisecond), r.Error.Message)
	next := result(t, f, submit(t, f, "keep", &queue.Job{ID: "recall", Command: "recall"}))
	var got struct {
		Value int `json:"value"`
		PID   int `json:"pid"`
	}
	if next.OK {
		got = decode[struct {
			Value int `json:"value"`
			PID   int `json:"pid"`
		}](t, next.Result)
	}
	if !next.OK || got.Value != 42 || got.PID != first.WorkerPID || next.NewSession {
		t.Fatalf("after the cancel: ok=%v %+v new_session=%v; want value 42 on pid %d", next.OK, got, next.NewSession, first.WorkerPID)
	}
	if st := f.Agents[0].Pool().Stats(); st.Removed != 0 || st.Restarts != 0 {
		t.Errorf("pool removed %d, restarted %d workers; want none", st.Removed, st.Restarts)
	}
}

// A worker that ignores the cancel (a Python handler that swallows
// pw.Canceled) is killed after the agent's cancel grace, like at a timeout:
// the job ends "canceled", the poison guard does not count the kill, and
// the session is lost (the next job gets new_session).
func TestCancelIgnoredIsKilledAfterGrace(t *testing.T) {
	t.Parallel()
	script := filepath.Join(t.TempDir(), "loop_worker.py")
	sdk := filepath.Join(filepath.Dir(filepath.Dir(examplePath(t, "x"))), "worker", "python")
	if err := os.WriteFile(script, []byte(fmt.Sprintf(progressLoopWorker, sdk)), 0o644); err != nil {
		t.Fatal(err)
	}
	const grace = 500 * time.Millisecond
	f := pythonFleet(t, script, grace)
	first := result(t, f, submit(t, f, "stub", &queue.Job{ID: "stub-remember", Command: "remember", Payload: json.RawMessage(`1`)}))
	progress := firstProgress(t, f, "stub")
	submit(t, f, "stub", &queue.Job{ID: "stub", Command: "stubborn", TimeoutMS: 120000})
	waitSignal(t, progress, "progress from the stubborn handler")
	start := time.Now()
	cancelJob(t, f, "stub")
	r := result(t, f, "stub")
	took := time.Since(start)
	wantCanceled(t, r)
	t.Logf("ignored cancel: ended after %v (grace %v): %s", took.Round(time.Millisecond), grace, r.Error.Message)
	if took < grace {
		t.Errorf("ended after %v, before the grace of %v", took, grace)
	}
	if !strings.Contains(r.Error.Message, "killed") {
		t.Errorf("message %q: want the kill named", r.Error.Message)
	}
	if recs := deathRecords(t, f); len(recs) != 0 {
		t.Errorf("poison guard counted the cancel kill: %v", recs)
	}
	next := result(t, f, submit(t, f, "stub", &queue.Job{ID: "stub-recall", Command: "recall"}))
	if !next.OK || !next.NewSession || next.WorkerPID == first.WorkerPID {
		t.Fatalf("next job: ok=%v new_session=%v pid %d (killed %d); want a fresh session on a new worker", next.OK, next.NewSession, next.WorkerPID, first.WorkerPID)
	}
}

// A worker without the cancel feature (the Go helper) gets no cancel frame;
// it is killed after the grace and the job ends "canceled", not retried.
func TestCancelOldWorkerKilled(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	cfg.Agent.CancelGrace = 300 * time.Millisecond
	f := fleettest.StartFleet(t, cfg)
	id := submit(t, f, "old", &queue.Job{ID: "old-sleep", Command: "sleep", Payload: json.RawMessage(`{"ms":60000}`), TimeoutMS: 120000})
	waitExecuted(t, execLog, id)
	cancelJob(t, f, id)
	r := result(t, f, id)
	wantCanceled(t, r)
	if r.Attempt != 1 {
		t.Errorf("attempt %d, want 1", r.Attempt)
	}
	if n := len(fleettest.ReadExecLog(t, execLog)[id]); n != 1 {
		t.Errorf("job ran %d times, want once (no retry)", n)
	}
	if recs := deathRecords(t, f); len(recs) != 0 {
		t.Errorf("poison guard counted the cancel kill: %v", recs)
	}
	if n := dlqCount(t, f); n != 0 {
		t.Errorf("%d dead letters, want none", n)
	}
}

func dlqCount(t *testing.T, f *fleettest.Fleet) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := f.Topology().DLQ.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// Done when "Cancel, before submit": a cancel published with a plain NATS
// client before the job exists means the job never runs, whether an agent
// is running when the job arrives or starts only later (it loads the
// cancels first).
func TestCancelBeforeSubmit(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 1))
	f := fleettest.StartFleet(t, cfg)
	nc := f.Server.Connect(t)
	// `nats pub fleet.cancel.<id> ''`, made durable by the stream; a
	// request waits for the stream's ack.
	for _, id := range []string{"early-1", "early-2"} {
		if _, err := nc.Request("fleet.cancel."+id, nil, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	r := result(t, f, submit(t, f, "e", &queue.Job{ID: "early-1", Command: "echo"}))
	wantCanceled(t, r)

	// No agent at all: the job waits in the stream; a new agent must know
	// the cancel before it takes it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Agents[0].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	submit(t, f, "e", &queue.Job{ID: "early-2", Command: "echo"})
	f.AddAgent(t)
	wantCanceled(t, result(t, f, "early-2"))
	if execs := fleettest.ReadExecLog(t, execLog); len(execs) != 0 {
		t.Fatalf("canceled jobs ran: %v", execs)
	}
}

// Done when "Cancel, races", first half: a cancel after the result was
// stored changes nothing. The reply says so, the stored result stays, and
// it stays the only one.
func TestCancelAfterResult(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	id := submit(t, f, "", &queue.Job{ID: "done-first", Command: "echo", Payload: json.RawMessage(`"x"`)})
	before := result(t, f, id)
	if !before.OK {
		t.Fatalf("%+v", before.Error)
	}
	// One deadline for the cancel here and the read at the end, with the
	// probe's run, its cancel grace (2s: the helper has no cancel) and its
	// result in between.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	reply, err := f.Client.Cancel(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !reply.Finished {
		t.Errorf("cancel reply %+v: want finished", reply)
	}
	// The agent has the cancel once a later job's cancel has reached it
	// (the feed is in order): then nothing more may have happened to id.
	probe := submit(t, f, "", &queue.Job{ID: "probe", Command: "sleep", Payload: json.RawMessage(`{"ms":20000}`), TimeoutMS: 60000})
	fleettest.Eventually(t, 30*time.Second, func() error {
		if f.Agents[0].Pool().Stats().Busy == 0 {
			return errors.New("probe not running")
		}
		return nil
	})
	cancelJob(t, f, probe)
	wantCanceled(t, result(t, f, probe))
	after := result(t, f, id)
	if !after.OK || after.FinishedAt != before.FinishedAt || string(after.Result) != string(before.Result) {
		t.Fatalf("result changed after the cancel: %+v", after)
	}
	s, err := f.Topology().Results.Info(ctx, jetstream.WithSubjectFilter(f.Topology().Config.ResultSubject(id)))
	if err != nil {
		t.Fatal(err)
	}
	if n := s.State.Subjects[f.Topology().Config.ResultSubject(id)]; n != 1 {
		t.Fatalf("%d results stored for %s, want 1", n, id)
	}
}

// Done when "Cancel, races", second half: the agent running a job dies
// (Kill: no ack, no nak, workers gone) around the job's cancel, before or
// after it; the survivor that gets the job on redelivery ends it "canceled"
// without running it again.
func TestCancelDuringAgentKill(t *testing.T) {
	t.Parallel()
	for _, order := range []string{"kill-then-cancel", "cancel-then-kill"} {
		t.Run(order, func(t *testing.T) {
			t.Parallel()
			cfg, execLog := withExecLog(t, fleetConfig(1, 1))
			cfg.Agent.Queue.AckWait = 4 * time.Second
			// Long enough that the dying agent never gives up on the
			// worker by itself before the kill.
			cfg.Agent.CancelGrace = time.Minute
			f := fleettest.StartFleet(t, cfg)
			id := submit(t, f, "doomed", &queue.Job{ID: "failover", Command: "sleep", Payload: json.RawMessage(`{"ms":60000}`), TimeoutMS: 120000})
			waitExecuted(t, execLog, id)
			survivor := f.AddAgent(t)
			if order == "kill-then-cancel" {
				f.Agents[0].Kill()
				cancelJob(t, f, id)
			} else {
				cancelJob(t, f, id)
				f.Agents[0].Kill()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r, err := f.Client.Result(ctx, id, nil)
			if err != nil {
				t.Fatal(err)
			}
			wantCanceled(t, r)
			if r.Agent != survivor.Name() || r.Attempt < 2 {
				t.Errorf("result from %s at attempt %d; want the survivor %s on a redelivery", r.Agent, r.Attempt, survivor.Name())
			}
			if n := len(fleettest.ReadExecLog(t, execLog)[id]); n != 1 {
				t.Errorf("job ran %d times, want once (on the killed agent only)", n)
			}
			t.Logf("redelivered to %s at attempt %d: %s", r.Agent, r.Attempt, r.Error.Message)
		})
	}
}
