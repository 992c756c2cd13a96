package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/cli"
)

// The chaos command's default worker is this binary itself, run as the Go
// test worker (package testworker): it needs nothing installed, and it logs
// every execution, so the report counts re-executions exactly. A process
// started that way never reaches main.
func init() {
	if testworker.IsHelper() {
		testworker.Main()
	}
}

func cmdChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos", "chaos [--duration 60s] [--agents 3] [--workers 2] [--rate 100] [--worker-cmd CMD]", stderr)
	var cfg dispatcher.ChaosConfig
	fs.DurationVar(&cfg.Duration, "duration", time.Minute, "how long load runs while faults are injected")
	fs.IntVar(&cfg.Agents, "agents", 3, "in-process agents")
	fs.IntVar(&cfg.Workers, "workers", 2, "workers per agent")
	fs.IntVar(&cfg.Sessions, "sessions", 40, "sessions the load is spread over")
	fs.IntVar(&cfg.Rate, "rate", 100, "jobs submitted per second")
	fs.Float64Var(&cfg.AnonymousShare, "anonymous", 0.2, "share of jobs without a session (negative: none)")
	fs.DurationVar(&cfg.FaultInterval, "fault-interval", time.Second, "mean time between faults")
	fs.Float64Var(&cfg.AgentFaultShare, "agent-faults", 0.25, "share of faults that kill a whole agent rather than one worker (negative: none)")
	fs.DurationVar(&cfg.MaxDownTime, "max-down", 0, "a killed agent restarts within this (default twice the agent TTL, so some failovers reach the survivors)")
	fs.Uint64Var(&cfg.Seed, "seed", 0, "seed for a repeatable run (default random; the report prints it)")
	var workerCmd cli.Argv
	fs.Var(&workerCmd, "worker-cmd", `worker command, e.g. "python3 examples/echo_worker.py" (default: this binary as the Go test worker, with an execution log)`)
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
		cfg.ExecLog = filepath.Join(dir, "exec.log")
		cfg.WorkerCmd, cfg.WorkerEnv = testworker.Command(testworker.ExecLog(cfg.ExecLog))
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
	rep, err := dispatcher.RunChaos(ctx, cfg)
	if rep != nil && *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}
