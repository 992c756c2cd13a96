package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// UpConfig configures Up, a local stack on one machine.
type UpConfig struct {
	// Agents is the number of agent processes. Default 2.
	Agents int
	// AgentArgs are extra flags for every agent (e.g. --worker-cmd,
	// --pool-size). --nats and --name are set by Up.
	AgentArgs []string
	// AgentBin is the agent program. Default: FindAgentBinary.
	AgentBin string
	// Host and Port of the embedded server. Defaults 127.0.0.1 and 4222;
	// Port -1 picks a free port.
	Host string
	Port int
	// DataDir is the embedded server's JetStream directory. Required.
	DataDir string
	// StopTimeout bounds the agents' graceful stop before SIGKILL.
	// Default 30s.
	StopTimeout time.Duration
	// Logger, Out: logs and the stack's announcements. Defaults nop and
	// stdout.
	Logger *zap.Logger
	Out    io.Writer
	// Ready, when set, is called with the NATS URL and the agents' pids
	// once every agent has registered.
	Ready func(url string, pids []int)
}

// FindAgentBinary finds the agent program: next to the running executable
// (an installed pair), as procfleet-agent or agent on PATH, or else it is
// built from the checkout with `go build` into dir (the `go run` case).
func FindAgentBinary(ctx context.Context, dir string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		for _, name := range []string{"agent", "procfleet-agent"} {
			p := filepath.Join(filepath.Dir(exe), name)
			if st, err := os.Stat(p); err == nil && !st.IsDir() && p != exe {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath("procfleet-agent"); err == nil {
		return p, nil
	}
	src, err := findInCheckout(filepath.Join("cmd", "agent"))
	if err != nil {
		return "", errors.New("no agent binary found: install cmd/agent next to the dispatcher or pass --agent-bin")
	}
	out := filepath.Join(dir, "procfleet-agent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/agent: %v\n%s", err, b)
	}
	return out, nil
}

// Up runs a local stack until ctx ends: an embedded NATS server with
// JetStream, the dispatcher service, and cfg.Agents agent processes. Then it
// stops the agents gracefully (SIGTERM, which drains their jobs; SIGKILL
// after StopTimeout), the service and the server, leaving no process
// behind. Agents that exit on their own are restarted after a pause.
func Up(ctx context.Context, cfg UpConfig) error {
	if cfg.Agents <= 0 {
		cfg.Agents = 2
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 4222
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.DataDir == "" {
		return errors.New("dispatcher: UpConfig.DataDir is required")
	}
	log := cfg.Logger.Named("up")
	if cfg.AgentBin == "" {
		tmp, err := os.MkdirTemp("", "procfleet-up-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if cfg.AgentBin, err = FindAgentBinary(ctx, tmp); err != nil {
			return err
		}
	}

	srv, url, err := embedded.Start(ctx, embedded.Config{Host: cfg.Host, Port: cfg.Port, StoreDir: cfg.DataDir, Logger: cfg.Logger.Named("nats")})
	if err != nil {
		return err
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	nc, err := nats.Connect(url, nats.Name("procfleet-up"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect %s: %w", url, err)
	}
	defer nc.Close()

	// The dispatcher service runs beside the agents and stops after them.
	svcCtx, stopSvc := context.WithCancel(context.WithoutCancel(ctx))
	svcDone := make(chan struct{})
	var svcErr error
	svcReady := make(chan struct{})
	go func() {
		defer close(svcDone)
		svcErr = Serve(svcCtx, nc, ServeConfig{Logger: cfg.Logger, Ready: func() { close(svcReady) }})
	}()
	defer func() {
		stopSvc()
		<-svcDone
	}()
	select {
	case <-svcReady:
	case <-svcDone:
		return fmt.Errorf("dispatcher service: %w", svcErr)
	case <-ctx.Done():
		return nil
	}

	fmt.Fprintf(cfg.Out, "procfleet up: NATS %s, data in %s, %d agents (%s)\n", url, cfg.DataDir, cfg.Agents, cfg.AgentBin)
	var wg sync.WaitGroup
	agents := make([]*agentProc, cfg.Agents)
	for i := range agents {
		agents[i] = &agentProc{name: fmt.Sprintf("local-%d", i+1), bin: cfg.AgentBin,
			args: append([]string{"--nats", url, "--name", fmt.Sprintf("local-%d", i+1)}, cfg.AgentArgs...),
			log:  log, stopTimeout: cfg.StopTimeout}
		wg.Add(1)
		go func() {
			defer wg.Done()
			agents[i].supervise(ctx)
		}()
	}
	defer wg.Wait()

	if cfg.Ready != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, err := NewClient(ctx, nc, queue.Config{})
			if err != nil {
				return
			}
			for ctx.Err() == nil {
				list, err := client.topo.ListAgents(ctx)
				if err == nil && len(list) >= cfg.Agents {
					pids := make([]int, 0, len(list))
					for _, a := range list {
						pids = append(pids, a.PID)
					}
					cfg.Ready(url, pids)
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	fmt.Fprintf(cfg.Out, "submit with: go run ./cmd/dispatcher submit --nats %s --session s1 --command echo --payload '{\"hi\":1}' --wait\nCtrl-C stops everything.\n", url)
	<-ctx.Done()
	fmt.Fprintln(cfg.Out, "procfleet up: stopping agents (draining their jobs)")
	return nil
}

// agentProc is one supervised agent process.
type agentProc struct {
	name, bin   string
	args        []string
	log         *zap.Logger
	stopTimeout time.Duration
}

// supervise runs the agent, restarting it if it exits on its own, until ctx
// ends; then it stops it gracefully.
func (p *agentProc) supervise(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		cmd := exec.Command(p.bin, p.args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		// Its own process group, so a terminal's Ctrl-C reaches only us and
		// we decide the order; the parent-death signal stops it if we die.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			p.log.Error("start agent", zap.String("agent", p.name), zap.Error(err))
			return
		}
		p.log.Info("agent started", zap.String("agent", p.name), zap.Int("pid", cmd.Process.Pid))
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			p.log.Warn("agent exited; restarting", zap.String("agent", p.name), zap.Error(err), zap.Duration("after", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(p.stopTimeout):
				p.log.Warn("agent did not stop in time; killing it", zap.String("agent", p.name))
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			}
			p.log.Info("agent stopped", zap.String("agent", p.name), zap.String("pid", strconv.Itoa(cmd.Process.Pid)))
			return
		}
	}
}
