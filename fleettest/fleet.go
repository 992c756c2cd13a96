package fleettest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/execlog"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/internal/sharedtest"
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
	local  *localfleet.Fleet
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
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	local, err := localfleet.Start(ctx, localfleet.Config{URL: cfg.Server.URL, Name: t.Name(), Queue: cfg.Agent.Queue})
	if err != nil {
		t.Fatalf("fleettest: topology: %v", err)
	}
	// Registered first, so it runs last: after every agent's own cleanup.
	t.Cleanup(func() { local.Stop(context.Background()) })
	f.local, f.NC, f.Client = local, local.NC, local.Client
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := f.local.StartAgent(ctx, cfg)
	if m != nil {
		t.Cleanup(func() {
			f.local.Remove(m)
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := m.Agent.Stop(sctx); err != nil {
				t.Errorf("fleettest: stop agent %s: %v", cfg.Name, err)
			}
			m.Conn.Close()
		})
	}
	if err != nil {
		t.Fatalf("fleettest: %v", err)
	}
	a := m.Agent
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
// agent and each live agent owns exactly its quota (queue.Quotas: the
// assignment has settled), and fails the test if that takes longer than
// timeout. It is localfleet.WaitBalanced, the tools' one wait.
func (f *Fleet) WaitBalanced(t testing.TB, timeout time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := localfleet.WaitBalanced(ctx, f.Live(), f.Client.Topology().Config.Partitions); err != nil {
		t.Fatalf("fleettest: %v", err)
	}
}

// Eventually polls cond every 20ms until it returns nil or timeout passes,
// then fails the test with cond's last error. It is the one way to wait for
// a state without sleeping a fixed time.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	sharedtest.Eventually(t, timeout, cond)
}

// Throughout checks cond every interval for d (the span a state must hold,
// e.g. while a fault lasts) and fails the test at once with the first
// error cond returns.
func Throughout(t testing.TB, d, interval time.Duration, cond func() error) {
	t.Helper()
	window := time.NewTimer(d)
	defer window.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-window.C:
			return
		case <-tick.C:
			if err := cond(); err != nil {
				t.Fatalf("within %s: %v", d, err)
			}
		}
	}
}

// Topology is a shortcut for the fleet's topology.
func (f *Fleet) Topology() *queue.Topology { return f.Client.Topology() }

// Execution is one line of a helper worker's execution log.
type Execution = execlog.Execution

// ReadExecLog reads the execution log written by helper workers started
// with testworker.ExecLog(path) and returns every execution per job id, in
// log order.
func ReadExecLog(t testing.TB, path string) map[string][]Execution {
	t.Helper()
	out, err := execlog.Read(path)
	if err != nil {
		t.Fatalf("fleettest: %v", err)
	}
	return out
}
