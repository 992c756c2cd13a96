package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// twinAgent returns an agent named name on srv, not started, whose error
// logs the test reads; it is stopped on cleanup.
func twinAgent(t *testing.T, srv *fleettest.Server, name string) (*agent.Agent, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.ErrorLevel)
	cfg := agent.Config{Name: name, Queue: fastQueue(), Logger: zap.New(core)}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
	a, err := agent.New(srv.Connect(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Stop(ctx); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
	})
	return a, logs
}

func startAgent(t *testing.T, a *agent.Agent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNameTwinRefused: an agent started under the name of a live agent
// (two processes with one --name would take each other's leases, and their
// sessions would go back and forth) refuses to start, with an error that
// names the holder; the holder goes on alone, all partitions its own.
func TestNameTwinRefused(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	first, logs := twinAgent(t, srv, "twin")
	startAgent(t, first)
	second, _ := twinAgent(t, srv, "twin")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := second.Start(ctx)
	if !errors.Is(err, agent.ErrNameInUse) {
		t.Fatalf("second agent under one name: Start returned %v, want ErrNameInUse", err)
	}
	want := fmt.Sprintf(`name "twin" is in use by a live agent (host %s pid %d since `, hostname(t), os.Getpid())
	if !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "give each agent its own --name") {
		t.Fatalf("error %q does not say %q and what to do", err, want)
	}
	t.Logf("refused: %v", err)
	all := make([]int, fastQueue().Partitions)
	for i := range all {
		all[i] = i
	}
	waitOwns(t, first, "the agent alone under its name", all)
	if n := logs.FilterMessageSnippet(twinLog).Len(); n != 0 {
		t.Fatalf("the holder logged %d twin errors: the refused agent registered", n)
	}
}

// TestNameTwinsStartingTogether: two agents started at the same moment
// under one name both find it free (their workers start meanwhile), but
// only one registers: the other's first entry is written only over what it
// read (queue.Topology.Register), so it finds the first's entry, sees it
// refreshed, and refuses to start.
func TestNameTwinsStartingTogether(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	as := make([]*agent.Agent, 2)
	for i := range as {
		as[i], _ = twinAgent(t, srv, "twin")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errs := make(chan error, len(as))
	for _, a := range as {
		go func() { errs <- a.Start(ctx) }()
	}
	var started, refused int
	for range as {
		switch err := <-errs; {
		case err == nil:
			started++
		case errors.Is(err, agent.ErrNameInUse):
			refused++
			t.Logf("refused: %v", err)
		default:
			t.Errorf("Start: %v", err)
		}
	}
	if started != 1 || refused != 1 {
		t.Fatalf("%d started and %d refused, want one of each", started, refused)
	}
}

// TestRestartUnderOldNameAfterCrash: an agent restarted under the name of
// one that crashed (Kill: its entry stays until it expires) is no twin: it
// starts once that entry expires, and the fleet is balanced again with it
// within the crash failover bound (TestCrashFailoverBeforeLeaseExpiry's:
// a quarter of a lease TTL twenty times the agent TTL).
func TestRestartUnderOldNameAfterCrash(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(3, 1)
	cfg.Agent.Queue.AgentTTL = 2 * time.Second
	cfg.Agent.Queue.LeaseTTL = 40 * time.Second
	cfg.Configure = func(i int, c *agent.Config) {
		if i == 4 {
			c.Name = "agent-3" // the victim's
		}
	}
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)
	victim := f.Agents[2]
	if len(victim.Partitions()) == 0 {
		t.Fatal("the victim owns no partition; the test proves nothing")
	}
	killed := time.Now()
	victim.Kill()
	back := f.AddAgent(t)
	started := time.Since(killed)
	f.WaitBalanced(t, 60*time.Second)
	took := time.Since(killed)
	t.Logf("agent killed and restarted under its name: started after %s, balanced after %s",
		started.Round(time.Millisecond), took.Round(time.Millisecond))
	if back.Name() != victim.Name() || len(back.Partitions()) == 0 {
		t.Fatalf("restarted agent %s holds %v", back.Name(), back.Partitions())
	}
	if bound := f.Topology().Config.LeaseTTL / 4; took > bound {
		t.Errorf("restart took %s, want at most %s", took, bound)
	}
}

// twinLog is the error an agent logs when a twin appears while it runs.
const twinLog = "another agent runs under this agent's name"

// TestNameTwinLogged: a twin that appears while an agent runs (one that
// started during a network partition, say, when the registry showed no
// entry) cannot be refused; the agent logs an error naming it. Here the
// twin's heartbeats are written by the test, from another host. An agent
// alone under its name logs none.
func TestNameTwinLogged(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	alone, aloneLogs := twinAgent(t, srv, "alone")
	startAgent(t, alone)
	a, logs := twinAgent(t, srv, "twin")
	startAgent(t, a)
	topo := a.Topology()
	twin := &queue.AgentInfo{Name: "twin", Host: "elsewhere", PID: 4242, StartedAt: time.Now().UTC()}
	fleettest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := topo.Heartbeat(ctx, twin); err != nil {
			return err
		}
		got := logs.FilterMessageSnippet(twinLog).All()
		if len(got) == 0 {
			return errors.New("the agent did not log its twin")
		}
		if f := got[0].ContextMap(); f["other_host"] != "elsewhere" || f["other_pid"] != int64(4242) {
			t.Fatalf("logged %v, want the twin's host and pid", f)
		}
		return nil
	})
	if n := aloneLogs.FilterMessageSnippet(twinLog).Len(); n != 0 {
		t.Fatalf("the agent alone under its name logged %d twin errors", n)
	}
}

func hostname(t *testing.T) string {
	t.Helper()
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
