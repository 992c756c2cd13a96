// Package up is `dispatcher up`: a local stack on one machine, an embedded
// NATS server with JetStream, the dispatcher service and N agent
// processes, until Ctrl-C; then everything stops in order and no process is
// left behind.
package up

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// ErrInvalidConfig is wrapped by every error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("up: invalid config")

// Defaults of Config, which the command's flags show too.
const (
	DefaultAgents      = 2
	DefaultPoolSize    = 2 // workers per agent, for the command line's --pool-size
	DefaultHost        = "127.0.0.1"
	DefaultPort        = 4222
	DefaultStopTimeout = 30 * time.Second
)

// Config configures Run, a local stack on one machine.
type Config struct {
	// Agents is the number of agent processes. Default 2.
	Agents int
	// AgentArgs are extra flags for every agent (e.g. --worker-cmd,
	// --pool-size). --nats and --name are set by Up.
	AgentArgs []string
	// AgentBin is the agent program. Default: localfleet.AgentProgram.Find.
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

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Agents == 0 {
		c.Agents = DefaultAgents
	}
	if c.Host == "" {
		c.Host = DefaultHost
	}
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	c.Out, _, c.Logger = localfleet.OutputDefaults(c.Out, io.Discard, io.Discard, c.Logger)
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	switch {
	case c.DataDir == "":
		return fmt.Errorf("%w: DataDir is required", ErrInvalidConfig)
	case c.Agents < 0:
		return fmt.Errorf("%w: Agents cannot be negative", ErrInvalidConfig)
	case c.StopTimeout < 0:
		return fmt.Errorf("%w: StopTimeout cannot be negative", ErrInvalidConfig)
	}
	return nil
}

// Run runs a local stack until ctx ends: an embedded NATS server with
// JetStream, the dispatcher service, and cfg.Agents agent processes. Then it
// stops the agents gracefully (SIGTERM, which drains their jobs; SIGKILL
// after StopTimeout), the service and the server, leaving no process
// behind. Agents that exit on their own are restarted after a pause.
func Run(ctx context.Context, cfg Config) error {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger.Named("up")
	if cfg.AgentBin == "" {
		tmp, err := os.MkdirTemp("", "procfleet-up-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		if cfg.AgentBin, err = localfleet.AgentProgram.Find(ctx, tmp); err != nil {
			return err
		}
	}

	unlock, err := embedded.LockStore(cfg.DataDir)
	if err != nil {
		return err
	}
	defer unlock()
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
		svcErr = dispatcher.Serve(svcCtx, nc, dispatcher.ServeConfig{Logger: cfg.Logger, Ready: func() { close(svcReady) }})
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
	for i := range cfg.Agents {
		name := fmt.Sprintf("local-%d", i+1)
		p := &localfleet.AgentProcess{Name: name, Bin: cfg.AgentBin,
			Args: append([]string{"--nats", url, "--name", name}, cfg.AgentArgs...),
			Log:  log, StopTimeout: cfg.StopTimeout}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Supervise(ctx)
		}()
	}
	defer wg.Wait()

	if cfg.Ready != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client, err := dispatcher.NewClient(ctx, nc, queue.Config{})
			if err != nil {
				return
			}
			for ctx.Err() == nil {
				list, err := client.Topology().ListAgents(ctx)
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
