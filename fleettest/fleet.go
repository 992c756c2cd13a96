package fleettest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/queue"
)

// FleetConfig shapes a fleet started by StartFleet.
type FleetConfig struct {
	// Agents is how many agents start. Default 1.
	Agents int
	// Agent is the template for every agent. Name is set per agent
	// ("agent-1", ...) unless Configure sets it. Pool.Worker.Command
	// defaults to the helper worker (see HelperWorker), so the test
	// binary's TestMain must call testworker.Main when IsHelper.
	Agent agent.Config
	// Configure, when set, adjusts agent i's config before it starts.
	Configure func(i int, cfg *agent.Config)
	// Server is an existing server to use. Default: StartServer(t).
	Server *Server
	// Logger for agents. Default: zaptest logger at warn level, so test
	// output stays readable.
	Logger *zap.Logger
}

// Fleet is a server, a client and N agents in this process.
type Fleet struct {
	t      testing.TB
	cfg    FleetConfig
	Server *Server
	NC     *nats.Conn
	Client *dispatcher.Client
	Agents []*agent.Agent
	next   int
}

// StartFleet starts an embedded server (unless given), creates the topology,
// and starts cfg.Agents agents, each with its pool ready. Everything stops
// on test cleanup.
func StartFleet(t testing.TB, cfg FleetConfig) *Fleet {
	t.Helper()
	if cfg.Agents == 0 {
		cfg.Agents = 1
	}
	if cfg.Server == nil {
		cfg.Server = StartServer(t)
	}
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	f := &Fleet{t: t, cfg: cfg, Server: cfg.Server}
	f.NC = cfg.Server.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := dispatcher.EnsureClient(ctx, f.NC, cfg.Agent.Queue)
	if err != nil {
		t.Fatalf("fleettest: topology: %v", err)
	}
	f.Client = client
	for range cfg.Agents {
		f.AddAgent(t)
	}
	return f
}

// AddAgent starts one more agent (e.g. to test a join) and returns it.
func (f *Fleet) AddAgent(t testing.TB) *agent.Agent {
	t.Helper()
	f.next++
	i := f.next
	cfg := f.cfg.Agent
	cfg.Name = fmt.Sprintf("agent-%d", i)
	if cfg.Logger == nil {
		cfg.Logger = f.cfg.Logger
	}
	if len(cfg.Pool.Worker.Command) == 0 {
		cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = HelperWorker()
	}
	if f.cfg.Configure != nil {
		f.cfg.Configure(i, &cfg)
	}
	// Each agent gets its own connection, as separate processes would.
	nc := f.Server.Connect(t)
	a, err := agent.New(nc, cfg)
	if err != nil {
		t.Fatalf("fleettest: agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatalf("fleettest: start agent %s: %v", cfg.Name, err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := a.Stop(sctx); err != nil {
			t.Errorf("fleettest: stop agent %s: %v", cfg.Name, err)
		}
	})
	f.Agents = append(f.Agents, a)
	return a
}

// Live returns the agents that have not stopped.
func (f *Fleet) Live() []*agent.Agent {
	var out []*agent.Agent
	for _, a := range f.Agents {
		select {
		case <-a.Done():
		default:
			out = append(out, a)
		}
	}
	return out
}

// WaitBalanced waits until every partition is owned by exactly one live
// agent and each live agent owns some (the assignment has settled).
func (f *Fleet) WaitBalanced(t testing.TB, timeout time.Duration) {
	t.Helper()
	parts := f.Client.Topology().Config.Partitions
	Eventually(t, timeout, func() error {
		seen := make([]int, parts)
		for _, a := range f.Live() {
			ps := a.Partitions()
			if len(ps) == 0 {
				return fmt.Errorf("agent %s owns no partition", a.Name())
			}
			for _, p := range ps {
				seen[p]++
			}
		}
		if i := slices.IndexFunc(seen, func(n int) bool { return n != 1 }); i >= 0 {
			return fmt.Errorf("partition %d is owned by %d agents", i, seen[i])
		}
		// Every partition owned is not enough: a handover may still be under
		// way. Settled means each agent owns exactly its rendezvous share.
		live := f.Live()
		names := make([]string, 0, len(live))
		for _, a := range live {
			names = append(names, a.Name())
		}
		share := queue.Assign(parts, names)
		for _, a := range live {
			if want := share[a.Name()]; !slices.Equal(a.Partitions(), want) {
				return fmt.Errorf("agent %s owns %v, not yet %v", a.Name(), a.Partitions(), want)
			}
		}
		return nil
	})
}

// Eventually polls cond every 20ms until it returns nil or timeout passes,
// then fails the test with cond's last error. It is the package's one way to
// wait for a state without sleeping a fixed time.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleettest: condition not met within %s: %v", timeout, err)
		}
		<-tick.C
	}
}

// Topology is a shortcut for the fleet's topology.
func (f *Fleet) Topology() *queue.Topology { return f.Client.Topology() }

// Execution is one line of a helper worker's execution log.
type Execution struct {
	JobID   string
	Attempt int
	PID     int
	Session string
}

// ReadExecLog reads the execution log written by helper workers started
// with testworker.ExecLog(path) and returns every execution per job id.
func ReadExecLog(t testing.TB, path string) map[string][]Execution {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return map[string][]Execution{}
		}
		t.Fatalf("fleettest: exec log: %v", err)
	}
	out := map[string][]Execution{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		var e Execution
		if _, err := fmt.Sscanf(line, "%s %d %d %s", &e.JobID, &e.Attempt, &e.PID, &e.Session); err != nil {
			// Anonymous jobs have no session field.
			if _, err := fmt.Sscanf(line, "%s %d %d", &e.JobID, &e.Attempt, &e.PID); err != nil {
				t.Fatalf("fleettest: exec log line %q: %v", line, err)
			}
		}
		out[e.JobID] = append(out[e.JobID], e)
	}
	return out
}
