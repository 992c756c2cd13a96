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
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// deathRecords reads the poison bucket: key -> number of deaths recorded.
func deathRecords(t *testing.T, f *fleettest.Fleet) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := f.Topology().JS.KeyValue(ctx, f.Topology().Config.PoisonBucket())
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return map[string]int{}
	}
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int)
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Deaths []json.RawMessage `json:"deaths"`
		}
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			t.Fatalf("record %s: %v (%s)", k, err, e.Value())
		}
		out[k] = len(rec.Deaths)
	}
	return out
}

// The death count is shared through NATS: the second death, on another
// agent after the first agent died, still stops the job.
func TestPoisonCountSurvivesFailover(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 1)
	// A long retry delay, so that agent-1 is gone before the redelivery.
	cfg.Agent.RetryBackoffMin = 10 * time.Second
	cfg.Agent.RetryBackoffMax = 10 * time.Second
	f := fleettest.StartFleet(t, cfg)
	id := submit(t, f, "", &queue.Job{ID: "poison-failover", Command: "crash", MaxAttempts: 20})
	fleettest.Eventually(t, 20*time.Second, func() error {
		recs := deathRecords(t, f)
		if len(recs) != 1 {
			return fmt.Errorf("death records: %v", recs)
		}
		if f.Agents[0].Counters().Retried < 1 {
			return errors.New("not naked yet")
		}
		return nil
	})
	f.Agents[0].Kill()
	f.AddAgent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r, err := f.Client.Result(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindPoison || r.Attempt != 2 || r.Agent != "agent-2" {
		t.Fatalf("result: %+v (error %+v)", r, r.Error)
	}
	for _, want := range []string{"attempt 1 on agent agent-1", "attempt 2 on agent agent-2"} {
		if !strings.Contains(r.Error.Message, want) {
			t.Errorf("message %q does not say %q", r.Error.Message, want)
		}
	}
	if recs := deathRecords(t, f); len(recs) != 1 {
		t.Errorf("death records: %v", recs)
	} else {
		for k, n := range recs {
			if n != 2 || !strings.HasPrefix(k, "FLEET_JOBS.") {
				t.Errorf("record %s holds %d deaths, want 2", k, n)
			}
		}
	}
}

// Healthy jobs and app errors write nothing to the poison bucket.
func TestPoisonGuardWritesNothingForHealthyJobs(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	if r := result(t, f, submit(t, f, "h", &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)})); !r.OK {
		t.Fatalf("echo: %+v", r.Error)
	}
	if r := result(t, f, submit(t, f, "h", &queue.Job{Command: "fail"})); r.OK || r.Error.Kind != queue.KindApp {
		t.Fatalf("fail: %+v", r)
	}
	if recs := deathRecords(t, f); len(recs) != 0 {
		t.Fatalf("death records after healthy jobs: %v", recs)
	}
}

// A job asking for a longer timeout than the agent's ceiling runs with the
// ceiling: a hanging job is killed there, and after PoisonDeaths kills it
// is poison.
func TestMaxJobTimeoutCapsAnAttempt(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 1)
	cfg.Agent.JobTimeout = 300 * time.Millisecond
	cfg.Agent.MaxJobTimeout = 500 * time.Millisecond
	cfg.Agent.PoisonDeaths = 3
	f := fleettest.StartFleet(t, cfg)
	start := time.Now()
	r := result(t, f, submit(t, f, "", &queue.Job{Command: "hang", TimeoutMS: 3_600_000, MaxAttempts: 20}))
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindPoison || r.Attempt != 3 {
		t.Fatalf("result: %+v (error %+v)", r, r.Error)
	}
	if !strings.Contains(r.Error.Message, "3 workers died") || strings.Count(r.Error.Message, ": timeout: ") != 3 ||
		strings.Count(r.Error.Message, "(attempt timeout 500ms)") != 3 {
		t.Errorf("message %q does not name 3 timeouts at the 500ms ceiling", r.Error.Message)
	}
	t.Logf("3 attempts capped at 500ms ended in %v", time.Since(start))
	if st := f.Agents[0].Pool().Stats(); st.Removed != 3 {
		t.Errorf("pool removed %d workers, want 3", st.Removed)
	}
}

func TestTimeoutAndPoisonConfigValidation(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	nc := s.Connect(t)
	cmd, _ := fleettest.HelperWorker()
	cases := []struct {
		name string
		edit func(*agent.Config)
		want string
	}{
		{"job timeout over the ceiling", func(c *agent.Config) { c.JobTimeout = 2 * time.Hour }, "cannot exceed MaxJobTimeout"},
		{"negative ceiling", func(c *agent.Config) { c.MaxJobTimeout = -time.Second }, "MaxJobTimeout cannot be negative"},
		{"negative poison bound", func(c *agent.Config) { c.PoisonDeaths = -1 }, "PoisonDeaths cannot be negative"},
	}
	for _, c := range cases {
		cfg := agent.Config{}
		cfg.Pool.Worker.Command = cmd
		c.edit(&cfg)
		if _, err := agent.New(nc, cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want %q", c.name, err, c.want)
		}
	}
}

// The Python SDK answers a well-framed call it cannot decode with an error
// and keeps serving: through a real fleet, with payloads published by a
// plain NATS client, the same worker process answers every job.
func TestUndecodablePayloadKeepsPythonWorker(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for the Python SDK: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	cfg := fleetConfig(1, 1)
	cfg.Agent.Pool.Worker.Command = []string{python, filepath.Join(wd, "..", "examples", "echo_worker.py")}
	f := fleettest.StartFleet(t, cfg)
	col := collect(t, f)
	first := result(t, f, submit(t, f, "py", &queue.Job{ID: "py-first", Command: "echo", Payload: json.RawMessage(`{"hello":1}`)}))
	if !first.OK || first.WorkerPID == 0 {
		t.Fatalf("first echo: %+v", first)
	}
	payloads := map[string]string{
		"py-bigint":    strings.Repeat("9", 5000),
		"py-arrays":    strings.Repeat("[", 3000) + strings.Repeat("]", 3000),
		"py-objects":   strings.Repeat(`{"a":`, 3000) + "1" + strings.Repeat("}", 3000),
		"py-nestedint": `{"x":[1,{"y":-` + strings.Repeat("1", 5000) + `}]}`,
	}
	nc := f.Server.Connect(t)
	for id, p := range payloads {
		col.Expect(id)
		m := nats.NewMsg("fleet.job.s.py")
		m.Header.Set(nats.MsgIdHdr, id)
		m.Data = []byte(`{"id":"` + id + `","command":"echo","max_attempts":20,"payload":` + p + `}`)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	waitAll(t, col, 60*time.Second)
	for id := range payloads {
		r, _, _ := col.Result(id)
		if r.OK || r.Error == nil || r.Error.Kind != queue.KindApp || r.Error.Type != "UndecodablePayload" || r.Attempt != 1 {
			t.Errorf("%s: %+v (error %+v)", id, r, r.Error)
			continue
		}
		if r.WorkerPID != first.WorkerPID {
			t.Errorf("%s ran on pid %d, want the first worker %d", id, r.WorkerPID, first.WorkerPID)
		}
	}
	last := result(t, f, submit(t, f, "py", &queue.Job{ID: "py-last", Command: "echo", Payload: json.RawMessage(`"still here"`)}))
	if !last.OK || last.WorkerPID != first.WorkerPID || last.NewSession {
		t.Fatalf("last echo: %+v (want pid %d, same session)", last, first.WorkerPID)
	}
	if st := f.Agents[0].Pool().Stats(); st.Removed != 0 || st.Restarts != 0 {
		t.Errorf("pool removed %d, restarted %d workers; want none", st.Removed, st.Restarts)
	}
}

// A worker killed from outside (SIGKILL: an operator, a chaos test) is not
// the job's fault: two such kills do not make the job poison.
func TestExternalKillsAreNotPoison(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 1))
	id := submit(t, f, "", &queue.Job{Command: "sleep", Payload: json.RawMessage(`{"ms":3000}`), MaxAttempts: 20})
	killed := map[int]bool{}
	for len(killed) < 2 {
		var pid int
		fleettest.Eventually(t, 30*time.Second, func() error {
			for _, w := range f.Agents[0].Pool().Stats().Workers {
				if w.State == "busy" && w.PID > 0 && !killed[w.PID] {
					pid = w.PID
					return nil
				}
			}
			return errors.New("no busy worker yet")
		})
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed[pid] = true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r, err := f.Client.Result(ctx, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK || r.Attempt != 3 {
		t.Fatalf("result: %+v (error %+v), want ok at attempt 3", r, r.Error)
	}
	if recs := deathRecords(t, f); len(recs) != 0 {
		t.Fatalf("death records after external kills: %v", recs)
	}
}

// A worker that closes its stdout and keeps running is killed by the
// worker package (SIGKILL): that kill is the worker's fault and counts
// toward the poison bound, unlike a kill from outside. Found by TestCorpus.
func TestClosedStdoutCountsAsPoison(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(1, 2))
	col := collect(t, f)
	col.Expect("closer")
	submit(t, f, "", &queue.Job{ID: "closer", Command: "close_stdout", MaxAttempts: 20})
	waitAll(t, col, 60*time.Second)
	r, _, _ := col.Result("closer")
	if r.OK || r.Error == nil || r.Error.Kind != queue.KindPoison || r.Attempt != 2 {
		t.Fatalf("result: %+v (error %+v), want poison at attempt 2", r, r.Error)
	}
	if !strings.Contains(r.Error.Message, "stdout closed while the process kept running") {
		t.Fatalf("poison message %q does not name the cause", r.Error.Message)
	}
}
