package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/procfleet/procfleet/cmd/dispatcher/bench"
	"github.com/procfleet/procfleet/internal/cli"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("bench", "bench [--nats URL] [--agents N] [--workers N] [--jobs N] [--sessions N] [--payload-size B] [--inflight N] [--capacity N] [--server-cpus 0] [--agent-process] [--worker-cmd CMD] [--json]", stderr)
	var cfg bench.Config
	fs.StringVar(&cfg.NATSURL, "nats", "", "NATS server to use (default: an embedded server in this process)")
	fs.IntVar(&cfg.Agents, "agents", bench.DefaultAgents, "agents, all in this process")
	fs.IntVar(&cfg.Workers, "workers", bench.DefaultWorkers, "workers per agent (the floor runs agents x workers)")
	fs.IntVar(&cfg.Jobs, "jobs", bench.DefaultJobs, "jobs per measurement")
	fs.IntVar(&cfg.Sessions, "sessions", 0, "spread jobs over this many sessions (0: anonymous jobs)")
	fs.IntVar(&cfg.PayloadSize, "payload-size", bench.DefaultPayloadSize, "bytes of JSON payload per job")
	fs.IntVar(&cfg.Inflight, "inflight", 0, "jobs submitted and not finished at most (1: closed loop; 0: submit all at once)")
	fs.IntVar(&cfg.Capacity, "capacity", 0, "jobs each agent holds at once (0: the agent's adaptive default, 2 x workers up to max(2 x workers, 32))")
	serverCPUs := fs.String("server-cpus", "", "run the NATS server as a process of its own pinned to these CPUs, e.g. 0 or 0,1; the floor, the fleet and the bench client are pinned to the others")
	fs.BoolVar(&cfg.AgentProcess, "agent-process", false, "run each agent as a cmd/agent process, so that its CPU is measured apart")
	fs.StringVar(&cfg.AgentBin, "agent-bin", "", "agent program for --agent-process (default: next to the dispatcher, on PATH, or built from the checkout)")
	var workerCmd cli.Argv
	fs.Var(&workerCmd, "worker-cmd", "worker command (default: python3 examples/echo_worker.py)")
	fs.StringVar(&cfg.Command, "command", bench.DefaultCommand, "worker command each job runs")
	floor := fs.Bool("floor", true, "measure the floor (the workers driven over pipes, no NATS)")
	fleet := fs.Bool("fleet", true, "measure the fleet")
	fs.IntVar(&cfg.NATSFloorBatch, "nats-floor-batch", bench.DefaultNATSFloorBatch, "jobs each pull of the NATS floor asks for")
	fs.IntVar(&cfg.NATSFloorConsumers, "nats-floor-consumers", 0, "with --sessions, the NATS floor pulls through this many consumers, each filtering its share of the partitions (the one-consumer-per-agent design for that many agents; 0: the partition consumers)")
	fs.BoolVar(&cfg.NATSFloor, "nats-floor", false, "also measure the NATS floor: the same jobs through the same server, answered by a plain pull loop (result stored, job acked) instead of agents and workers")
	fs.IntVar(&cfg.StartupWorkers, "startup-workers", bench.DefaultStartupWorkers, "also time a pool start of this many slow-starting workers (0: skip)")
	fs.DurationVar(&cfg.StartupDelay, "startup-delay", bench.DefaultStartupDelay, "start-up delay of each worker in the start-up measurement")
	fs.BoolVar(&cfg.MemoryConsumers, "memory-consumers", false, "memory-stored job consumers (see serve --memory-consumers)")
	fs.StringVar(&cfg.ResultsStorage, "results-storage", "", "results stream storage, file or memory (see serve --results-storage; default the fleet's, file)")
	fs.DurationVar(&cfg.ResultsMaxAge, "results-max-age", 0, "how long results are kept (see serve --results-max-age; default 24h)")
	fs.IntVar(&cfg.Partitions, "partitions", 0, "session partitions of the topology (default 64; see serve --partitions)")
	fs.StringVar(&cfg.StoreDir, "store-dir", "", "directory for the JetStream store of the server the bench starts (default: the system's temporary directory); its filesystem is part of the server's cost")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the fleet measurement to this file")
	asJSON := fs.Bool("json", false, "print the report as JSON instead of a table")
	logLevel := fs.String("log-level", "warn", "fleet log level")
	log, err := parseLocal(fs, args, logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	if cfg.Jobs < 1 {
		// 0 would quietly become the default.
		return fmt.Errorf("--jobs must be at least 1, got %d", cfg.Jobs)
	}
	cfg.WorkerCmd = workerCmd
	if *serverCPUs != "" {
		for f := range strings.SplitSeq(*serverCPUs, ",") {
			c, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("--server-cpus %q: want CPU numbers separated by commas", *serverCPUs)
			}
			cfg.ServerCPUs = append(cfg.ServerCPUs, c)
		}
		// This program's `serve --embedded` is the server.
		if exe, err := os.Executable(); err == nil {
			cfg.ServerBin = exe
		}
	}
	cfg.NoFloor, cfg.NoFleet = !*floor, !*fleet
	cfg.Out, cfg.Progress, cfg.Logger = stdout, stderr, log
	if *asJSON {
		cfg.Out = io.Discard
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		cfg.CPUProfile = f
	}
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	return nil
}
