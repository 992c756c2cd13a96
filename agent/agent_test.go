package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/queue"
)

// fastQueue keeps failover and redelivery quick in tests.
func fastQueue() queue.Config {
	// Default TTLs: short ones make a starved -race run look like an agent
	// failure (a lease that misses its renewal moves its sessions).
	return queue.Config{Partitions: 16}
}

func fleetConfig(agents, workers int) fleettest.FleetConfig {
	cfg := fleettest.FleetConfig{Agents: agents}
	cfg.Agent.Queue = fastQueue()
	cfg.Agent.Pool.Size = workers
	cfg.Agent.RetryBackoffMin = 50 * time.Millisecond
	cfg.Agent.RetryBackoffMax = 500 * time.Millisecond
	cfg.Agent.RebalanceInterval = 200 * time.Millisecond
	return cfg
}

// sessionReply is what the helper worker's "session" command returns.
type sessionReply struct {
	PID        int             `json:"pid"`
	Session    string          `json:"session"`
	NewSession bool            `json:"new_session"`
	Count      int             `json:"count"`
	Seq        json.RawMessage `json:"seq"`
}

func decode[T any](t *testing.T, raw json.RawMessage) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("decode %s: %v", raw, err)
	}
	return v
}

func collect(t *testing.T, f *fleettest.Fleet) *dispatcher.Collector {
	t.Helper()
	col, err := f.Client.Collect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = col.Close() })
	return col
}

func waitAll(t *testing.T, col *dispatcher.Collector, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := col.Wait(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

func result(t *testing.T, f *fleettest.Fleet, id string) *queue.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := f.Client.Result(ctx, id, nil)
	if err != nil {
		t.Fatalf("result %s: %v", id, err)
	}
	return r
}

func submit(t *testing.T, f *fleettest.Fleet, session string, job *queue.Job) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	id, err := f.Client.Submit(ctx, session, job)
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return id
}

func TestAffinityAndOrder(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(3, 2))
	f.WaitBalanced(t, 20*time.Second)
	col := collect(t, f)

	const sessions, perSession, anonymous = 200, 5, 500
	var subs []dispatcher.Submission
	for j := range perSession {
		for s := range sessions {
			subs = append(subs, dispatcher.Submission{Session: fmt.Sprintf("s%d", s),
				Job: &queue.Job{ID: fmt.Sprintf("s%d-%d", s, j), Command: "session", Payload: json.RawMessage(fmt.Sprint(j))}})
		}
	}
	for i := range anonymous {
		subs = append(subs, dispatcher.Submission{Job: &queue.Job{ID: fmt.Sprintf("a%d", i), Command: "pid"}})
	}
	for _, s := range subs {
		col.Expect(s.Job.ID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Client.SubmitBatch(ctx, subs); err != nil {
		t.Fatal(err)
	}
	waitAll(t, col, 120*time.Second)

	servedBy := map[string]string{}
	anonAgents := map[string]int{}
	for _, s := range subs {
		r, _, _ := col.Result(s.Job.ID)
		if !r.OK {
			t.Fatalf("job %s failed: %+v", s.Job.ID, r.Error)
		}
		if s.Session == "" {
			anonAgents[r.Agent]++
			continue
		}
		rep := decode[sessionReply](t, r.Result)
		who := fmt.Sprintf("%s/%d", r.Agent, rep.PID)
		if prev, ok := servedBy[s.Session]; ok && prev != who {
			t.Errorf("session %s served by %s and %s", s.Session, prev, who)
		}
		servedBy[s.Session] = who
		var seq int
		_ = json.Unmarshal(rep.Seq, &seq)
		if rep.Count != seq+1 {
			t.Errorf("session %s: job %d ran as call %d on its worker (FIFO broken)", s.Session, seq, rep.Count)
		}
		if rep.NewSession != (seq == 0) {
			t.Errorf("session %s job %d: new_session=%v", s.Session, seq, rep.NewSession)
		}
	}
	if len(servedBy) != sessions {
		t.Fatalf("%d sessions served, want %d", len(servedBy), sessions)
	}
	if len(anonAgents) < 2 {
		t.Errorf("anonymous jobs were not spread over the agents: %v", anonAgents)
	}
	t.Logf("anonymous jobs per agent: %v", anonAgents)
}

func TestPlainNATSClient(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	nc := f.Server.Connect(t)
	sub, err := nc.SubscribeSync("fleet.result.plain-1")
	if err != nil {
		t.Fatal(err)
	}
	// No procfleet code on this path: a core NATS publish of a job envelope.
	if err := nc.Publish("fleet.job.s.user-42", []byte(`{"id":"plain-1","command":"echo","payload":{"hello":"world"}}`)); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		ID      string          `json:"id"`
		OK      bool            `json:"ok"`
		Result  json.RawMessage `json:"result"`
		Session string          `json:"session"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.ID != "plain-1" || r.Session != "user-42" || string(r.Result) != `{"hello":"world"}` {
		t.Fatalf("unexpected result %s", msg.Data)
	}
}

func TestKilledWorkerNaksAndRebinds(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 2))
	first := result(t, f, submit(t, f, "sess", &queue.Job{ID: "k1", Command: "session", Payload: json.RawMessage(`0`)}))
	rep := decode[sessionReply](t, first.Result)
	if !first.OK || !rep.NewSession {
		t.Fatalf("first job: %+v", first)
	}
	if err := syscall.Kill(rep.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 10*time.Second, func() error {
		if syscall.Kill(rep.PID, 0) == nil {
			return fmt.Errorf("pid %d still alive", rep.PID)
		}
		return nil
	})
	second := result(t, f, submit(t, f, "sess", &queue.Job{ID: "k2", Command: "session", Payload: json.RawMessage(`1`)}))
	rep2 := decode[sessionReply](t, second.Result)
	if !second.OK {
		t.Fatalf("second job failed: %+v", second.Error)
	}
	if second.Attempt != 2 {
		t.Errorf("second job attempt = %d, want 2 (the checkout error naks it once)", second.Attempt)
	}
	if !rep2.NewSession || rep2.PID == rep.PID {
		t.Errorf("second job ran on pid %d new_session=%v; want a replacement with new_session", rep2.PID, rep2.NewSession)
	}
	if st := f.Agents[0].Pool().Stats(); st.Removed < 1 {
		t.Errorf("pool removed %d workers, want >= 1", st.Removed)
	}
	for _, w := range f.Agents[0].Pool().Stats().Workers {
		if w.PID == rep.PID {
			t.Errorf("dead worker pid %d still in the pool", rep.PID)
		}
	}
}

func TestPoisonJobEndsInDLQ(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 2))
	col := collect(t, f)
	col.Expect("poison")
	// max_attempts 20, but the poison guard stops the job after 2 workers
	// died running it (Config.PoisonDeaths default).
	submit(t, f, "victim", &queue.Job{ID: "poison", Command: "crash", MaxAttempts: 20})
	var ids []string
	for i := range 20 {
		ids = append(ids, submit(t, f, fmt.Sprintf("ok%d", i%4), &queue.Job{ID: fmt.Sprintf("fine-%d", i), Command: "echo", Payload: json.RawMessage(`1`)}))
	}
	col.Expect(ids...)
	waitAll(t, col, 60*time.Second)
	r, _, _ := col.Result("poison")
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindPoison || r.Attempt != 2 {
		t.Fatalf("poison result: %+v (error %+v)", r, r.Error)
	}
	for _, want := range []string{"2 workers died", "poison bound 2", "attempt 1 on agent agent-1", "attempt 2 on agent agent-1", "exit status 3"} {
		if !strings.Contains(r.Error.Message, want) {
			t.Errorf("poison result message %q does not say %q", r.Error.Message, want)
		}
	}
	for _, id := range ids {
		if r, _, _ := col.Result(id); !r.OK {
			t.Errorf("job %s failed next to the poison job: %+v", id, r.Error)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dl, err := f.Topology().DeadLetters(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dl) != 1 || dl[0].JobID != "poison" || dl[0].Attempts != 2 || dl[0].Kind != queue.KindPoison || !strings.Contains(dl[0].Error, "exit status 3") {
		t.Fatalf("dead letters: %+v", dl)
	}
	// The job is gone from the stream, so no third worker dies for it.
	fleettest.Eventually(t, 10*time.Second, func() error {
		info, err := f.Topology().Jobs.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 {
			return fmt.Errorf("%d jobs still in the stream", info.State.Msgs)
		}
		return nil
	})
	if st := f.Agents[0].Pool().Stats(); st.Removed != 2 {
		t.Errorf("pool removed %d workers, want exactly 2", st.Removed)
	}
	// Other sessions bound to a worker the poison job killed were naked
	// once and rerun; nothing was exhausted.
	if c := f.Agents[0].Counters(); c.Exhausted != 0 {
		t.Errorf("counters %+v: want no exhausted job", c)
	}
}

func TestMalformedEnvelope(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	col := collect(t, f)
	nc := f.Server.Connect(t)
	cases := []struct {
		id, subject, body string
	}{
		{"bad-json", "fleet.job.s.m1", `{"command":`},
		{"bad-types", "fleet.job.any", `{"command":42}`},
		{"bad-attempts", "fleet.job.s.m2", `{"command":"echo","max_attempts":-3}`},
		{"no-command", "fleet.job.any", `{"payload":{}}`},
		{"bad-timeout", "fleet.job.any", `{"command":"echo","timeout_ms":1000000000000}`},
	}
	for _, c := range cases {
		col.Expect(c.id)
		m := nats.NewMsg(c.subject)
		m.Header.Set(nats.MsgIdHdr, c.id)
		m.Data = []byte(c.body)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	waitAll(t, col, 30*time.Second)
	for _, c := range cases {
		r, _, _ := col.Result(c.id)
		if r.OK || r.Error == nil || r.Error.Kind != queue.KindBadRequest {
			t.Errorf("%s: %+v", c.id, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fleettest.Eventually(t, 10*time.Second, func() error {
		dl, err := f.Topology().DeadLetters(ctx, 10)
		if err != nil {
			return err
		}
		if len(dl) != len(cases) {
			return fmt.Errorf("%d dead letters, want %d", len(dl), len(cases))
		}
		return nil
	})
	// The agent keeps running.
	if r := result(t, f, submit(t, f, "m1", &queue.Job{Command: "echo", Payload: json.RawMessage(`"still here"`)})); !r.OK {
		t.Fatalf("agent did not survive malformed input: %+v", r.Error)
	}
}

func TestDuplicateSubmissionRunsOnce(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	job := func(id string) *queue.Job {
		return &queue.Job{ID: id, Command: "session", Payload: json.RawMessage(`0`)}
	}
	ack1, err := f.Topology().Submit(ctx, "dup", job("same"))
	if err != nil {
		t.Fatal(err)
	}
	ack2, err := f.Topology().Submit(ctx, "dup", job("same"))
	if err != nil {
		t.Fatal(err)
	}
	if ack1.Duplicate || !ack2.Duplicate {
		t.Fatalf("dedup: first duplicate=%v second duplicate=%v", ack1.Duplicate, ack2.Duplicate)
	}
	if r := result(t, f, "same"); !r.OK {
		t.Fatalf("job failed: %+v", r.Error)
	}
	// A later job of the same session is the session's second call: the
	// duplicate never ran.
	next := result(t, f, submit(t, f, "dup", job("after")))
	if rep := decode[sessionReply](t, next.Result); rep.Count != 2 {
		t.Fatalf("the session saw %d calls before 'after', want 1 (duplicate ran?)", rep.Count-1)
	}
	info, err := f.Topology().Results.Info(ctx, jetstream.WithSubjectFilter("fleet.result.same"))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects["fleet.result.same"]; n != 1 {
		t.Fatalf("%d results stored for the job, want 1", n)
	}
}

// runLoad submits n session jobs in the background at a steady pace and
// returns their ids once all are submitted.
func runLoad(t *testing.T, f *fleettest.Fleet, col *dispatcher.Collector, prefix string, sessions, perSession int) []string {
	t.Helper()
	var ids []string
	var subs []dispatcher.Submission
	for j := range perSession {
		for s := range sessions {
			id := fmt.Sprintf("%s-%d-%d", prefix, s, j)
			ids = append(ids, id)
			subs = append(subs, dispatcher.Submission{Session: fmt.Sprintf("%s%d", prefix, s),
				Job: &queue.Job{ID: id, Command: "sleep", Payload: json.RawMessage(`{"ms":5}`)}})
		}
	}
	col.Expect(ids...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.Client.SubmitBatch(ctx, subs); err != nil {
		t.Fatal(err)
	}
	return ids
}

// withExecLog makes the fleet's helper workers log every execution.
func withExecLog(t *testing.T, cfg fleettest.FleetConfig) (fleettest.FleetConfig, string) {
	path := filepath.Join(t.TempDir(), "exec.log")
	cfg.Agent.Pool.Worker.Command, cfg.Agent.Pool.Worker.Env = fleettest.HelperWorker(testworker.ExecLog(path))
	return cfg, path
}

// stopAgentsFirst stops f's agents at cleanup, before the fleet's own
// cleanup and the servers': cleanups run last first, and an agent must stop
// while a server (a restarted one, say) still serves it. Stop runs once, so
// the fleet's own stop then does nothing.
func stopAgentsFirst(t *testing.T, f *fleettest.Fleet) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, a := range f.Agents {
			if err := a.Stop(ctx); err != nil {
				t.Errorf("stop %s: %v", a.Name(), err)
			}
		}
	})
}

// checkOnce fails the test unless every id ran exactly once.
func checkOnce(t *testing.T, path string, ids []string) {
	t.Helper()
	execs := fleettest.ReadExecLog(t, path)
	for _, id := range ids {
		if n := len(execs[id]); n != 1 {
			t.Errorf("job %s executed %d times: %+v", id, n, execs[id])
		}
	}
}

func TestGracefulStopUnderLoad(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(3, 2))
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 20*time.Second)
	col := collect(t, f)
	ids := runLoad(t, f, col, "g", 60, 5)
	// Stop one agent once the load is well under way.
	fleettest.Eventually(t, 60*time.Second, func() error {
		if n := col.Count(); n < len(ids)/4 {
			return fmt.Errorf("%d results so far", n)
		}
		return nil
	})
	victim := f.Agents[1]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := victim.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitAll(t, col, 120*time.Second)
	for _, id := range ids {
		if r, _, _ := col.Result(id); !r.OK {
			t.Errorf("job %s: %+v", id, r.Error)
		}
	}
	checkOnce(t, execLog, ids)
	f.WaitBalanced(t, 20*time.Second)
	for _, a := range f.Live() {
		if a == victim {
			t.Fatal("stopped agent still live")
		}
	}
}

func TestJoinUnderLoad(t *testing.T) {
	t.Parallel()
	cfg, execLog := withExecLog(t, fleetConfig(1, 2))
	f := fleettest.StartFleet(t, cfg)
	col := collect(t, f)
	ids := runLoad(t, f, col, "j", 40, 5)
	fleettest.Eventually(t, 60*time.Second, func() error {
		if n := col.Count(); n < len(ids)/5 {
			return fmt.Errorf("%d results so far", n)
		}
		return nil
	})
	joined := f.AddAgent(t)
	f.WaitBalanced(t, 30*time.Second)
	if len(joined.Partitions()) == 0 {
		t.Fatal("the new agent took no partition")
	}
	waitAll(t, col, 120*time.Second)
	for _, id := range ids {
		if r, _, _ := col.Result(id); !r.OK {
			t.Errorf("job %s: %+v", id, r.Error)
		}
	}
	checkOnce(t, execLog, ids)
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	nc := s.Connect(t)
	_, err := agent.New(nc, agent.Config{Name: "bad name!"})
	if err == nil {
		t.Fatal("want an error for a bad name and no worker command")
	}
	for _, want := range []string{"Name", "Pool.Worker.Command"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
