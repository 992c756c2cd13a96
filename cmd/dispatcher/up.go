package main

import (
	"context"
	"io"
	"strconv"

	"github.com/procfleet/procfleet/cmd/dispatcher/up"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/internal/localfleet"
)

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", `up [--agents N] [--worker-cmd "python3 worker.py"] [--pool-size N] [--queue Q | --config FILE] [--listen 127.0.0.1:4222] [--data DIR]`, stderr)
	agents := fs.Int("agents", up.DefaultAgents, "agent processes to run")
	workerCmd := fs.String("worker-cmd", "", "worker command for every agent (default: python3 examples/programs_worker.py)")
	poolSize := fs.Int("pool-size", up.DefaultPoolSize, "workers per agent")
	queueName := fs.String("queue", "default", "the queue every agent's pool serves")
	config := fs.String("config", "", "agent --config file (queues and pools, see examples/agent-queues.yaml) for every agent, instead of --worker-cmd, --pool-size and --queue")
	listen := fs.String("listen", defaultListen, "embedded NATS server's client address")
	data := fs.String("data", defaultDataDir, "embedded server's JetStream directory")
	agentBin := fs.String("agent-bin", "", "agent program (default: next to this program, on PATH as procfleet-agent, or built from the checkout)")
	var extra cli.List
	fs.Var(&extra, "agent-arg", "extra flag for every agent, e.g. --agent-arg=--max-jobs=1000 (repeatable)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	log, err := parseLocal(fs, args, logLevel)
	if err != nil {
		return err
	}
	host, port, err := splitHostPort(*listen)
	if err != nil {
		return err
	}
	if *config != "" {
		agentArgs := append([]string{"--config", *config, "--log-level", *logLevel}, extra...)
		return up.Run(ctx, up.Config{
			Agents: *agents, AgentArgs: agentArgs, AgentBin: *agentBin,
			Host: host, Port: port, DataDir: *data, Logger: log, Out: stdout,
		})
	}
	wc := *workerCmd
	if wc == "" {
		p, err := localfleet.FindExample("programs_worker.py")
		if err != nil {
			return err
		}
		wc = "python3 " + strconv.Quote(p)
	}
	agentArgs := append([]string{"--worker-cmd", wc, "--pool-size", strconv.Itoa(*poolSize), "--queue", *queueName, "--log-level", *logLevel}, extra...)
	return up.Run(ctx, up.Config{
		Agents: *agents, AgentArgs: agentArgs, AgentBin: *agentBin,
		Host: host, Port: port, DataDir: *data, Logger: log, Out: stdout,
	})
}
