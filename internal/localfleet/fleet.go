package localfleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// ErrInvalidConfig is wrapped by every error Start returns for a bad Config.
var ErrInvalidConfig = errors.New("localfleet: invalid config")

// DefaultBalanceTimeout is how long Start waits for the agents to divide
// the partitions when Config.BalanceTimeout is zero.
const DefaultBalanceTimeout = time.Minute

// Config configures Start.
type Config struct {
	// URL is the NATS server to use. Default "": an embedded server with
	// JetStream in a new temporary directory, on 127.0.0.1 and a random
	// port, removed by Stop.
	URL string
	// TempPattern names the embedded server's temporary directory (as
	// os.MkdirTemp). Default "procfleet-".
	TempPattern string
	// TempDir is where that directory is made. Default "": the system's
	// temporary directory.
	TempDir string
	// Name is the fleet client's NATS connection name; agents' connections
	// are named Name-<agent>. Default "procfleet-local".
	Name string
	// Queue is the NATS contract; the topology is created if missing.
	// Zero fields take queue's defaults.
	Queue queue.Config
	// Agents is how many in-process agents Start starts, named
	// AgentName(1..Agents). Default 0: none (call StartAgent).
	Agents int
	// AgentName names agent i (from 1). Default "agent-<i>".
	AgentName func(i int) string
	// Agent is the template of every agent Start starts; Name and Queue
	// are set per agent.
	Agent agent.Config
	// BalanceTimeout bounds the wait, after Start has started Agents
	// agents, until they have divided the partitions (WaitBalanced).
	// Default DefaultBalanceTimeout; negative skips the wait.
	BalanceTimeout time.Duration
	// Logger receives the embedded server's logs. Default: none.
	Logger *zap.Logger
}

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.TempPattern == "" {
		c.TempPattern = "procfleet-"
	}
	if c.Name == "" {
		c.Name = "procfleet-local"
	}
	if c.AgentName == nil {
		c.AgentName = func(i int) string { return fmt.Sprintf("agent-%d", i) }
	}
	if c.BalanceTimeout == 0 {
		c.BalanceTimeout = DefaultBalanceTimeout
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	if c.Agents < 0 {
		return fmt.Errorf("%w: Agents cannot be negative", ErrInvalidConfig)
	}
	return nil
}

// Fleet is a server (owned or not), a client with the topology, and the
// agents started in this process.
type Fleet struct {
	// URL is the server's client URL.
	URL string
	// NC is the fleet client's connection; each agent has its own.
	NC *nats.Conn
	// Client is a dispatcher client on NC.
	Client *dispatcher.Client

	cfg        Config
	stopServer func()

	mu      sync.Mutex
	members []*Member
}

// Member is one in-process agent and the connection it owns, as a
// separate process would.
type Member struct {
	Agent *agent.Agent
	Conn  *nats.Conn
}

// Start starts the server unless cfg.URL names one, connects, ensures the
// topology, then starts cfg.Agents agents and waits until they are
// balanced. On error everything started is stopped again.
func Start(ctx context.Context, cfg Config) (_ *Fleet, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	f := &Fleet{cfg: cfg, URL: cfg.URL, stopServer: func() {}}
	defer func() {
		if err != nil {
			f.Stop(context.WithoutCancel(ctx))
		}
	}()
	if f.URL == "" {
		_, url, stop, err := embedded.StartTemp(ctx, cfg.TempDir, cfg.TempPattern, cfg.Logger.Named("nats"))
		if err != nil {
			return nil, err
		}
		f.URL, f.stopServer = url, stop
	}
	if f.NC, err = nats.Connect(f.URL, nats.Name(cfg.Name), nats.MaxReconnects(-1)); err != nil {
		return nil, fmt.Errorf("connect %s: %w", f.URL, err)
	}
	if f.Client, err = dispatcher.EnsureClient(ctx, f.NC, cfg.Queue); err != nil {
		return nil, err
	}
	f.cfg.Queue = f.Client.Topology().Config
	for i := range cfg.Agents {
		acfg := cfg.Agent
		acfg.Name = cfg.AgentName(i + 1)
		if _, err := f.StartAgent(ctx, acfg); err != nil {
			return nil, err
		}
	}
	if cfg.Agents > 0 && cfg.BalanceTimeout > 0 {
		wctx, cancel := context.WithTimeout(ctx, cfg.BalanceTimeout)
		defer cancel()
		if err := WaitBalanced(wctx, f.Agents(), f.cfg.Queue.Partitions); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// Queue returns the fleet's NATS contract, with defaults applied.
func (f *Fleet) Queue() queue.Config { return f.cfg.Queue }

// StartAgent connects a new connection, creates the agent from cfg (its
// Queue is the fleet's) and starts it. Stop stops it, unless the caller
// takes it out of the fleet with Remove first. When the agent was created
// but failed to start, the member is returned with the error, so that the
// caller can stop it at once.
func (f *Fleet) StartAgent(ctx context.Context, cfg agent.Config) (*Member, error) {
	cfg.Queue = f.cfg.Queue
	nc, err := nats.Connect(f.URL, nats.Name(f.cfg.Name+"-"+cfg.Name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect agent %s: %w", cfg.Name, err)
	}
	a, err := agent.New(nc, cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	m := &Member{Agent: a, Conn: nc}
	// Added before Start: a failed start still needs its Stop.
	f.mu.Lock()
	f.members = append(f.members, m)
	f.mu.Unlock()
	if err := a.Start(ctx); err != nil {
		return m, fmt.Errorf("start agent %s: %w", cfg.Name, err)
	}
	return m, nil
}

// Remove takes m out of the fleet: Stop no longer stops it (the caller
// has killed it, or stops it itself).
func (f *Fleet) Remove(m *Member) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members = slices.DeleteFunc(f.members, func(x *Member) bool { return x == m })
}

// Agents returns the fleet's agents, in the order they were started.
func (f *Fleet) Agents() []*agent.Agent {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*agent.Agent, len(f.members))
	for i, m := range f.members {
		out[i] = m.Agent
	}
	return out
}

// StopAgents stops every agent gracefully, all at once, within 30s from
// ctx, and closes their connections. An agent stopping finishes or naks
// what it holds, which needs the server: so agents stop first.
func (f *Fleet) StopAgents(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	f.mu.Lock()
	members := f.members
	f.members = nil
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.Agent.Stop(sctx)
			m.Conn.Close()
		}()
	}
	wg.Wait()
}

// Stop stops the agents (StopAgents), closes the client's connection and,
// when Start started it, the server. Stopping twice is safe.
func (f *Fleet) Stop(ctx context.Context) {
	f.StopAgents(ctx)
	if f.NC != nil {
		f.NC.Close()
	}
	f.stopServer()
	f.stopServer = func() {}
}

// WaitBalanced waits until the live agents among agents have settled the
// partitions: each of the partitions is owned by exactly one of them, and
// each owns exactly its quota (queue.Quotas), so that no handover is still
// under way. Which partitions an agent owns depends on the order the fleet
// formed in (queue.Rebalance is sticky), so it is not checked. It polls
// until ctx ends and then returns an error that says what was still
// missing; it never returns nil without the fleet balanced.
func WaitBalanced(ctx context.Context, agents []*agent.Agent, partitions int) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		err := balanced(agents, partitions)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("localfleet: agents not balanced: %w (%w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// balanced returns nil when every partition is owned by exactly one live
// agent and every live agent owns its quota (queue.Balanced), else what
// differs.
func balanced(agents []*agent.Agent, partitions int) error {
	var live []*agent.Agent
	for _, a := range agents {
		select {
		case <-a.Done():
		default:
			live = append(live, a)
		}
	}
	if len(live) == 0 {
		return errors.New("no live agent")
	}
	owners := make(map[int]string, partitions)
	names := make([]string, 0, len(live))
	for _, a := range live {
		names = append(names, a.Name())
		for _, p := range a.Partitions() {
			if p < 0 || p >= partitions {
				return fmt.Errorf("agent %s owns partition %d, out of range [0,%d)", a.Name(), p, partitions)
			}
			if o, dup := owners[p]; dup {
				return fmt.Errorf("partition %d is owned by %s and %s", p, o, a.Name())
			}
			owners[p] = a.Name()
		}
	}
	return queue.Balanced(partitions, names, owners)
}
