package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/procfleet/procfleet/cmd/dispatcher/chaos"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/internal/execlog"
	"github.com/procfleet/procfleet/internal/localfleet"
)

func cmdChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos", "chaos [--duration 60s] [--agents 3] [--workers 2] [--rate 100] [--worker-cmd CMD]", stderr)
	var cfg chaos.Config
	fs.DurationVar(&cfg.Duration, "duration", chaos.DefaultDuration, "how long load runs while faults are injected")
	fs.IntVar(&cfg.Agents, "agents", chaos.DefaultAgents, "in-process agents")
	fs.IntVar(&cfg.Workers, "workers", chaos.DefaultWorkers, "workers per agent")
	fs.IntVar(&cfg.Sessions, "sessions", chaos.DefaultSessions, "sessions the load is spread over")
	fs.IntVar(&cfg.Rate, "rate", chaos.DefaultRate, "jobs submitted per second")
	fs.Float64Var(&cfg.AnonymousShare, "anonymous", chaos.DefaultAnonymousShare, "share of jobs without a session (negative: none)")
	fs.DurationVar(&cfg.FaultInterval, "fault-interval", chaos.DefaultFaultInterval, "mean time between faults")
	fs.Float64Var(&cfg.AgentFaultShare, "agent-faults", chaos.DefaultAgentFaultShare, "share of faults that kill a whole agent rather than one worker (negative: none)")
	fs.DurationVar(&cfg.MaxDownTime, "max-down", 0, "a killed agent restarts within this (default twice the agent TTL, so some failovers reach the survivors)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for a repeatable run (default random; the report prints it)")
	var workerCmd cli.Argv
	fs.Var(&workerCmd, "worker-cmd", `worker command, e.g. "python3 examples/echo_worker.py" (default: the Go test worker program, with an execution log)`)
	command := fs.String("command", "", `job command (default "sleep" for the built-in worker, else "echo")`)
	payload := fs.String("payload", "", `job payload JSON (default {"ms":5} for the built-in worker, else {})`)
	asJSON := fs.Bool("json", false, "print the report as JSON after the text")
	logLevel := fs.String("log-level", "error", "fleet log level")
	log, err := parseLocal(fs, args, logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	if len(workerCmd) == 0 {
		dir, err := os.MkdirTemp("", "procfleet-chaos-log-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin, err := localfleet.TestWorkerProgram.Find(ctx, dir)
		if err != nil {
			return err
		}
		cfg.ExecLog = filepath.Join(dir, "exec.log")
		cfg.WorkerCmd = []string{bin}
		cfg.WorkerEnv = append(os.Environ(), execlog.Env+"="+cfg.ExecLog)
		cfg.Command, cfg.Payload = "sleep", json.RawMessage(`{"ms":5}`)
	} else {
		cfg.WorkerCmd = workerCmd
	}
	if *command != "" {
		cfg.Command = *command
	}
	if *payload != "" {
		if !json.Valid([]byte(*payload)) {
			return errors.New("--payload is not valid JSON")
		}
		cfg.Payload = json.RawMessage(*payload)
	}
	cfg.Out, cfg.Progress, cfg.Logger = stdout, stderr, log
	rep, err := chaos.Run(ctx, cfg)
	if rep != nil && *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}
