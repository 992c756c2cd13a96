package reliability_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// mixedFleet is `dispatcher serve --embedded` and three cmd/agent
// processes running the example Python workers:
//
//	agent-a  --queue programs, programs_worker.py x2
//	agent-b  --queue echo, echo_worker.py x2
//	agent-c  --config: programs x2 and echo x2
type mixedFleet struct {
	url      string
	client   *dispatcher.Client
	nc       *nats.Conn
	js       jetstream.JetStream
	programs *queue.Topology
	echo     *queue.Topology
	procs    map[string]*proc
}

const mixedPartitions = 16

func startMixedFleet(t *testing.T) *mixedFleet {
	t.Helper()
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Fatalf("python3 is needed for the example workers: %v", err)
	}
	programsWorker, _ := filepath.Abs("../examples/programs_worker.py")
	echoWorker, _ := filepath.Abs("../examples/echo_worker.py")

	f := &mixedFleet{url: "nats://127.0.0.1:" + strconv.Itoa(freePort(t)), procs: map[string]*proc{}}
	startServerProc(t, "nats", f.url, t.TempDir())
	client := connectClient(t, f.url) // waits until serve created the default topology
	f.client = client
	f.nc = client.Conn()
	f.js = client.Topology().JS

	conf := filepath.Join(t.TempDir(), "agent-c.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, `queues:
  - queue: programs
    worker_cmd: [%q, %q]
    pool_size: 2
  - queue: echo
    worker_cmd: [%q, %q]
    pool_size: 2
`, python, programsWorker, python, echoWorker), 0o600); err != nil {
		t.Fatal(err)
	}
	agentProc := func(name string, args ...string) {
		args = append([]string{"--nats", f.url, "--name", name, "--partitions", strconv.Itoa(mixedPartitions), "--log-level", "warn"}, args...)
		f.procs[name] = startProc(t, name, binary(t, "agent"), nil, args...)
	}
	agentProc("agent-a", "--queue", "programs", "--worker-cmd", python+" "+programsWorker, "--pool-size", "2")
	agentProc("agent-b", "--queue", "echo", "--worker-cmd", python+" "+echoWorker, "--pool-size", "2")
	agentProc("agent-c", "--config", conf)

	// The agents create the queues' streams; open them once they exist.
	fleettest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		if f.programs, err = queue.OpenQueue(ctx, f.js, queue.Config{Queue: "programs"}); err != nil {
			return err
		}
		f.echo, err = queue.OpenQueue(ctx, f.js, queue.Config{Queue: "echo"})
		return err
	})
	// Partitions of each queue go to the agents serving it, only.
	waitLeases(t, f.programs, []string{"agent-a", "agent-c"}, 60*time.Second)
	waitLeases(t, f.echo, []string{"agent-b", "agent-c"}, 60*time.Second)
	return f
}

// publish sends jobs with plain nats.go (no procfleet code): sessions x
// perSession jobs of command on the queue's session subjects, in order per
// session, and anon jobs on its any subject. It returns the ids in
// publish order.
func (f *mixedFleet) publish(t *testing.T, q, command string, sessions, perSession, anon int) []string {
	t.Helper()
	var ids []string
	var futures []jetstream.PubAckFuture
	send := func(subject, id string) {
		msg := &nats.Msg{Subject: subject, Header: nats.Header{}}
		msg.Data = fmt.Appendf(nil, `{"id":%q,"command":%q,"payload":{"n":%d}}`, id, command, len(ids))
		msg.Header.Set(jetstream.MsgIDHeader, id)
		fu, err := f.js.PublishMsgAsync(msg)
		if err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
		ids = append(ids, id)
		futures = append(futures, fu)
	}
	for i := range perSession {
		for s := range sessions {
			send(fmt.Sprintf("fleet.job.%s.s.%s-s%d", q, q, s), fmt.Sprintf("%s-s%d-%d", q, s, i))
		}
	}
	for i := range anon {
		send("fleet.job."+q+".any", fmt.Sprintf("%s-any-%d", q, i))
	}
	for i, fu := range futures {
		select {
		case <-fu.Ok():
		case err := <-fu.Err():
			t.Fatalf("publish %s: %v", ids[i], err)
		case <-time.After(30 * time.Second):
			t.Fatalf("publish %s: no ack", ids[i])
		}
	}
	return ids
}

// checkQueue requires every result to be ok, from queue q, run by one of
// servers.
func checkQueue(t *testing.T, results map[string]*queue.Result, ids []string, q string, servers ...string) {
	t.Helper()
	for _, id := range ids {
		r := results[id]
		if !r.OK {
			t.Errorf("job %s failed: %+v", id, r.Error)
			continue
		}
		if r.Queue != q {
			t.Errorf("job %s: result queue %q, want %q", id, r.Queue, q)
		}
		if !slices.Contains(servers, r.Agent) {
			t.Errorf("job %s of queue %s ran on %s, which does not serve it (servers %v)", id, q, r.Agent, servers)
		}
	}
}

// TestQueuesMixedFleet: three agents, two kinds of worker, two queues, one
// fleet. 200 session jobs on programs and 500 anonymous jobs on echo, sent
// by plain nats.go, all succeed (session_info is unknown to the echo
// worker, so a programs job that reached it would fail); each ran on an
// agent serving its queue; each programs session stayed on one worker and
// ran in publish order.
func TestQueuesMixedFleet(t *testing.T) {
	t.Parallel()
	f := startMixedFleet(t)
	programIDs := f.publish(t, "programs", "session_info", 20, 10, 0)
	echoIDs := f.publish(t, "echo", "echo", 0, 0, 500)

	results := waitResults(t, f.programs, append(slices.Clone(programIDs), echoIDs...), 2*time.Minute)
	checkQueue(t, results, programIDs, "programs", "agent-a", "agent-c")
	checkQueue(t, results, echoIDs, "echo", "agent-b", "agent-c")

	type info struct {
		PID   int `json:"pid"`
		Count int `json:"count"`
	}
	agents := map[string]bool{}
	for s := range 20 {
		var pid int
		var agent string
		for i := range 10 {
			id := fmt.Sprintf("programs-s%d-%d", s, i)
			r := results[id]
			var in info
			if err := json.Unmarshal(r.Result, &in); err != nil {
				t.Fatalf("job %s: %s: %v", id, r.Result, err)
			}
			if i == 0 {
				pid, agent = in.PID, r.Agent
				agents[agent] = true
			}
			if in.PID != pid || r.Agent != agent {
				t.Errorf("session %d moved: job %d on %s/%d, job 0 on %s/%d", s, i, r.Agent, in.PID, agent, pid)
			}
			if in.Count != i+1 {
				t.Errorf("session %d: job %d was call %d of its session on its worker, want %d (out of order)", s, i, in.Count, i+1)
			}
		}
	}
	if len(agents) != 2 {
		t.Errorf("programs sessions ran on %v, want both agent-a and agent-c", agents)
	}
	t.Logf("200 programs session jobs and 500 echo jobs: all ok on agents serving their queues")

	// Status knows the queues (made by the agents, with 16 partitions
	// where the default queue has 64) and who serves them.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := f.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"default": {}, "echo": {"agent-b", "agent-c"}, "programs": {"agent-a", "agent-c"}}
	for _, q := range st.Queues {
		if w, ok := want[q.Name]; !ok || !slices.Equal(q.Agents, w) {
			t.Errorf("status: queue %s served by %v, want %v", q.Name, q.Agents, w)
		}
		delete(want, q.Name)
	}
	if len(want) > 0 {
		t.Errorf("status lacks queues %v", want)
	}
}

// TestQueuesFailover SIGKILLs agent-a (programs only) while both queues
// have work: its programs partitions move to agent-c, the only other agent
// serving programs, never to agent-b; every job of both queues gets an ok
// result, none lost.
func TestQueuesFailover(t *testing.T) {
	t.Parallel()
	f := startMixedFleet(t)
	// Load: jobs keep arriving on both queues while agent-a dies, a round
	// every 50ms for 3s: one job for each of 40 programs sessions, 10 echo
	// jobs. The second half waits for the kill, so that however slow the
	// machine, the kill falls inside the load.
	const rounds = 60
	killedc := make(chan struct{})
	var programIDs, echoIDs []string
	for r := range rounds {
		for s := range 40 {
			programIDs = append(programIDs, fmt.Sprintf("programs-s%d-%d", s, r))
		}
		for k := range 10 {
			echoIDs = append(echoIDs, fmt.Sprintf("echo-r%d-%d", r, k))
		}
	}
	var published atomic.Int64
	pubErr := make(chan error, 1)
	go func() {
		pubErr <- func() error {
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			var futures []jetstream.PubAckFuture
			send := func(subject, id string) error {
				msg := &nats.Msg{Subject: subject, Header: nats.Header{}, Data: fmt.Appendf(nil, `{"id":%q,"command":%q}`, id,
					map[bool]string{true: "session_info", false: "echo"}[strings.HasPrefix(id, "programs")])}
				msg.Header.Set(jetstream.MsgIDHeader, id)
				fu, err := f.js.PublishMsgAsync(msg)
				futures = append(futures, fu)
				return err
			}
			for r := range rounds {
				if r == rounds/2 {
					select {
					case <-killedc:
					case <-time.After(2 * time.Minute):
						return errors.New("agent-a was not killed within 2 minutes of half the load")
					}
				}
				for s := range 40 {
					if err := send(fmt.Sprintf("fleet.job.programs.s.programs-s%d", s), programIDs[r*40+s]); err != nil {
						return err
					}
				}
				for k := range 10 {
					if err := send("fleet.job.echo.any", echoIDs[r*10+k]); err != nil {
						return err
					}
				}
				published.Store(int64(r + 1))
				<-tick.C
			}
			for _, fu := range futures {
				select {
				case <-fu.Ok():
				case err := <-fu.Err():
					return err
				case <-time.After(30 * time.Second):
					return errors.New("no publish ack within 30s")
				}
			}
			return nil
		}()
	}()

	// Under load: kill once agent-a has run some programs jobs.
	poll(t, time.Minute, 50*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		all, err := localfleet.ReadResults(ctx, f.programs)
		if err != nil {
			return err
		}
		n := 0
		for _, rs := range all {
			if rs[0].Agent == "agent-a" {
				n++
			}
		}
		if n < 40 {
			return fmt.Errorf("agent-a ran %d jobs so far", n)
		}
		return nil
	})
	f.procs["agent-a"].kill()
	killed := time.Now()
	atKill := published.Load()
	close(killedc)
	if err := <-pubErr; err != nil {
		t.Fatalf("publish: %v", err)
	}
	t.Logf("agent-a killed after %d of %d rounds were published", atKill, rounds)
	if atKill == rounds {
		t.Errorf("agent-a was killed after the load ended (the machine is too slow for this test's pacing)")
	}

	owners := waitLeases(t, f.programs, []string{"agent-c"}, 60*time.Second)
	t.Logf("programs partitions all on agent-c %s after the kill", time.Since(killed).Round(time.Millisecond))
	for p, o := range owners {
		if o != "agent-c" {
			t.Errorf("programs partition %d went to %s", p, o)
		}
	}
	results := waitResults(t, f.programs, append(slices.Clone(programIDs), echoIDs...), 2*time.Minute)
	checkQueue(t, results, programIDs, "programs", "agent-a", "agent-c")
	checkQueue(t, results, echoIDs, "echo", "agent-b", "agent-c")
	byAgent, rerun := map[string]int{}, 0
	for _, id := range programIDs {
		byAgent[results[id].Agent]++
		if results[id].Attempt > 1 {
			rerun++
		}
	}
	t.Logf("programs jobs by agent %v, %d of them delivered more than once; 0 lost", byAgent, rerun)

	// The echo queue's partitions never involved agent-a either.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leases, err := f.echo.LeaseOwners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for p, l := range leases {
		if l.Owner != "agent-b" && l.Owner != "agent-c" {
			t.Errorf("echo partition %d leased by %s", p, l.Owner)
		}
	}
}

// cpuTicks is a process's user plus system CPU time in clock ticks, from
// /proc/<pid>/stat.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return utime + stime
}

// TestQueuesRestCost measures one cmd/agent process serving 4 queues (one
// helper worker each, the default 64 partitions per queue) at rest: its CPU
// and the messages it sends the server. Each queue costs what one queue
// costs: a long poll per consumer per FetchWait and a lease renewal per
// partition every third of LeaseTTL; the heartbeat is one for the agent.
func TestQueuesRestCost(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	nc := s.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js, _ := jetstream.New(nc)
	base, err := queue.Ensure(ctx, js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	argv, env := fleettest.HelperWorker()
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = strconv.Quote(a)
	}
	var conf strings.Builder
	conf.WriteString("queues:\n")
	names := []string{"q1", "q2", "q3", "q4"}
	for _, q := range names {
		fmt.Fprintf(&conf, "  - queue: %s\n    worker_cmd: [%s]\n    pool_size: 1\n", q, strings.Join(quoted, ", "))
	}
	path := filepath.Join(t.TempDir(), "four.yaml")
	if err := os.WriteFile(path, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--nats", s.URL, "--name", "four", "--config", path, "--log-level", "warn"}
	for _, kv := range env {
		args = append(args, "--worker-env", kv)
	}
	p := startProc(t, "four", binary(t, "agent"), nil, args...)
	for _, q := range names {
		var topo *queue.Topology
		fleettest.Eventually(t, 60*time.Second, func() error {
			topo, err = queue.OpenQueue(ctx, js, queue.Config{Queue: q})
			return err
		})
		waitLeases(t, topo, []string{"four"}, 60*time.Second)
	}
	v0, err := s.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	c0, start := cpuTicks(t, p.pid()), time.Now()
	// The window is what is measured, not a synchronisation.
	time.Sleep(10 * time.Second)
	v1, err := s.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	c1, secs := cpuTicks(t, p.pid()), time.Since(start).Seconds()
	in := float64(v1.InMsgs-v0.InMsgs) / secs
	out := float64(v1.OutMsgs-v0.OutMsgs) / secs
	cpu := float64(c1-c0) / 100 / secs // USER_HZ is 100 on Linux
	t.Logf("at rest, 1 agent serving 4 queues x 64 partitions: agent CPU %.1f%% of a core, %.1f msgs/s into the server, %.1f msgs/s out",
		100*cpu, in, out)
	qc := base.Config
	perQueue := float64(qc.Partitions+1)/time.Second.Seconds() + float64(qc.Partitions)/(qc.LeaseTTL/3).Seconds()
	budget := 4*perQueue + 1/(qc.AgentTTL/3).Seconds()
	if in > 1.1*budget {
		t.Errorf("at rest the agent sends %.1f msgs/s, over its budget of %.1f (+10%%)", in, budget)
	}
}
