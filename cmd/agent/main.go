// Command agent runs one procfleet agent: a local pool of subprocess workers
// fed with jobs from NATS JetStream. Every flag also reads a PROCFLEET_*
// environment variable (e.g. --pool-size from PROCFLEET_POOL_SIZE).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// defaultGOGC is the agent's garbage collection target when the GOGC
// environment variable is not set. Its live heap is small (about 20 MB with
// 100 000 queued jobs) and it allocates a little for every job, so Go's
// default (collect once the heap has doubled) collects several times a
// second under load; at 4x the live heap it collects a quarter as often,
// for a few tens of MB.
const defaultGOGC = 400

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	var (
		natsURL        = fs.String("nats", cli.DefaultNATSURL(), "NATS server URL (default from NATS_URL)")
		workerCmd      cli.Argv
		workerDir      = fs.String("worker-dir", "", "working directory of workers (default: current)")
		poolSize       = fs.Int("pool-size", pool.DefaultSize, "number of workers")
		name           = fs.String("name", "", "agent name (default <hostname>-<pid>)")
		maxJobs        = fs.Int("max-jobs", 0, "recycle a worker after this many jobs, once it holds no live session (0 = never)")
		ttl            = fs.Duration("ttl", 0, "recycle a worker after this age, once it holds no live session (0 = never)")
		idleTTL        = fs.Duration("idle-ttl", 0, "recycle a worker idle this long (0 = never)")
		maxRSS         cli.Bytes
		sessionIdle    = fs.Duration("session-idle-ttl", pool.DefaultSessionIdleTTL, "end a session idle this long")
		startupTimeout = fs.Duration("startup-timeout", worker.DefaultStartupTimeout, "a worker must be ready within this")
		jobTimeout     = fs.Duration("job-timeout", agent.DefaultJobTimeout, "default job timeout (a job's timeout_ms wins)")
		maxJobTimeout  = fs.Duration("max-job-timeout", agent.DefaultMaxJobTimeout, "ceiling of one attempt: a job asking for a longer timeout_ms runs with this")
		poisonDeaths   = fs.Int("poison-deaths", agent.DefaultPoisonDeaths, "end a job as poison once this many workers died running it, whatever its max_attempts")
		cancelGrace    = fs.Duration("cancel-grace", agent.DefaultCancelGrace, "how long a worker running a canceled job may take to stop before it is killed and replaced")
		capacity       = fs.Int("capacity", 0, "jobs held at once, running or waiting (default 0: adaptive, 2 x pool size for jobs of 25ms or more, up to max(2 x pool size, 32) for short ones)")
		queueName      = fs.String("queue", queue.DefaultQueue, "the queue the pool serves (jobs on <prefix>.job.<queue>.s.<session> and <prefix>.job.<queue>.any; default: the old subjects)")
		configFile     = fs.String("config", "", "YAML file of the queues this agent serves, one pool each (replaces --queue, --worker-cmd, --pool-size, --capacity and the recycling flags; see examples/agent-queues.yaml)")
		prefix         = fs.String("prefix", queue.DefaultPrefix, "subject prefix")
		partitions     = fs.Int("partitions", 0, "session partitions: 0 adopts the jobs stream's count (for a stream this agent creates, the default queue's, else 64); another count must match the stream")
		metrics        = fs.String("metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9101 (default off)")
		logFormat      = fs.String("log-format", "console", "console or json")
		logLevel       = fs.String("log-level", "info", "debug, info, warn or error")
	)
	fs.Var(&workerCmd, "worker-cmd", `worker command, run as argv (no shell), e.g. "python3 worker.py" (required)`)
	var workerEnv cli.List
	fs.Var(&workerEnv, "worker-env", "add KEY=VALUE to the workers' environment (repeatable; comma-separated in PROCFLEET_WORKER_ENV)")
	envAllow := fs.String("worker-env-allow", strings.Join(agent.DefaultWorkerEnvAllow, ","), "variables of the agent's environment that workers inherit (comma-separated, trailing * matches a prefix)")
	var auth cli.Auth
	auth.Register(fs)
	fs.Var(&maxRSS, "max-rss", "restart a worker at once when its RSS exceeds this, e.g. 512MiB (0 = never)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: agent --worker-cmd "python3 worker.py" [--queue NAME] [flags]
       agent --config queues.yaml [flags]

Runs a pool of subprocess workers and feeds them jobs from NATS JetStream.
Each flag can also be set with PROCFLEET_<FLAG> (e.g. PROCFLEET_POOL_SIZE=8).

Flags:
`)
		fs.PrintDefaults()
	}
	err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	var queues []agent.QueueConfig
	if *configFile != "" {
		// On the command line they contradict the file; from the
		// environment (a shared agent.env) they are ignored.
		var conflicts []string
		for _, arg := range args {
			name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
			switch name {
			case "worker-cmd", "queue", "pool-size", "capacity", "max-jobs", "ttl", "idle-ttl", "max-rss", "session-idle-ttl", "startup-timeout", "worker-dir":
				if strings.HasPrefix(arg, "-") && !slices.Contains(conflicts, "--"+name) {
					conflicts = append(conflicts, "--"+name)
				}
			}
		}
		if len(conflicts) > 0 {
			return fmt.Errorf("--config sets every pool; %s belong in the file", strings.Join(conflicts, ", "))
		}
		if queues, err = loadConfigFile(*configFile); err != nil {
			return err
		}
	} else if len(workerCmd) == 0 {
		fs.Usage()
		return errors.New("--worker-cmd is required (or --config FILE)")
	} else if *poolSize < 1 {
		// 0 would quietly become the default size.
		return fmt.Errorf("--pool-size must be at least 1, got %d", *poolSize)
	}
	tel, err := cli.StartTelemetry(*logFormat, *logLevel, *metrics)
	if err != nil {
		return err
	}
	defer tel.Close()
	log, reg := tel.Log, tel.Registry

	cfg := agent.Config{
		Name:          *name,
		Queue:         queue.Config{Prefix: *prefix, Partitions: *partitions, Queue: *queueName},
		Queues:        queues,
		JobTimeout:    *jobTimeout,
		MaxJobTimeout: *maxJobTimeout,
		PoisonDeaths:  *poisonDeaths,
		CancelGrace:   *cancelGrace,
		Capacity:      *capacity,
		Logger:        log,
		Registerer:    reg,
		WorkerEnv:     workerEnv,
	}
	cfg.WorkerEnvAllow = []string{}
	for _, k := range strings.Split(*envAllow, ",") {
		if k = strings.TrimSpace(k); k != "" {
			cfg.WorkerEnvAllow = append(cfg.WorkerEnvAllow, k)
		}
	}
	cfg.Pool.Size = *poolSize
	cfg.Pool.MaxJobs = *maxJobs
	cfg.Pool.TTL = *ttl
	cfg.Pool.IdleTTL = *idleTTL
	cfg.Pool.MaxRSS = int64(maxRSS)
	cfg.Pool.SessionIdleTTL = *sessionIdle
	cfg.Pool.Worker = worker.Config{Command: workerCmd, Dir: *workerDir, StartupTimeout: *startupTimeout}

	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	natsOpts, err := auth.Options()
	if err != nil {
		return err
	}
	nc, err := cli.Connect(*natsURL, "procfleet-agent", log, natsOpts...)
	if err != nil {
		return err
	}
	defer nc.Close()

	a, err := agent.New(nc, cfg)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		_ = a.Stop(context.Background())
		return err
	}
	<-ctx.Done()
	stop() // a second signal now kills the process the default way
	log.Info("stopping: finishing running jobs")
	sctx, cancel := context.WithTimeout(context.Background(), *jobTimeout+10*time.Second)
	defer cancel()
	return a.Stop(sctx)
}
