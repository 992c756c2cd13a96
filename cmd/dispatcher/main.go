// Command dispatcher is procfleet's front door: it serves the fleet's API,
// submits jobs, reports status, manages dead letters and runs the demo.
// Every flag also reads a PROCFLEET_* environment variable.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/cmd/dispatcher/demo"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

const usage = `Usage: dispatcher <command> [flags]

Commands:
  serve    ensure the topology, serve the submit/status API, move dead letters
  submit   publish one job (--wait prints its result)
  cancel   cancel a job by id, queued or running (--wait prints its result)
  status   agents, partition owners, queue depth and dead letters
  dlq      list or replay dead letters: dlq list | dlq replay <seq>
  schedule periodic jobs: schedule add NAME --every 1h | --cron "0 2 * * *" ..., schedule list, schedule rm NAME
  demo     embedded NATS + two local agents + a workload, then a summary
  bench    measure the fleet against a raw pipe to the same worker
  chaos    run load while killing workers and agents, then reconcile every job
  up       a local stack: embedded NATS + N agent processes (Ctrl-C stops all)
  queue    declare or list queues: queue add NAME [--max-msgs N ...] | queue list

Run "dispatcher <command> --help" for a command's flags. Every flag can also
be set with PROCFLEET_<FLAG>.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var ec exitCode
		if errors.As(err, &ec) {
			// The command has said what went wrong (a job that failed).
			os.Exit(int(ec))
		}
		fmt.Fprintln(os.Stderr, "dispatcher:", err)
		os.Exit(1)
	}
}

// exitCode lets a command choose its status.
type exitCode int

func (e exitCode) Error() string { return "exit status " + strconv.Itoa(int(e)) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, usage)
		if len(args) == 0 {
			return errors.New("no command given")
		}
		return nil
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve":
		return cmdServe(ctx, rest, stderr)
	case "submit":
		return cmdSubmit(ctx, rest, stdout, stderr)
	case "cancel":
		return cmdCancel(ctx, rest, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "dlq":
		return cmdDLQ(ctx, rest, stdout, stderr)
	case "schedule":
		return cmdSchedule(ctx, rest, stdout, stderr)
	case "demo":
		return cmdDemo(ctx, rest, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, stdout, stderr)
	case "chaos":
		return cmdChaos(ctx, rest, stdout, stderr)
	case "up":
		return cmdUp(ctx, rest, stdout, stderr)
	case "queue":
		return cmdQueue(ctx, rest, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// Defaults the serve and up commands share for their embedded server.
const (
	defaultListen  = "127.0.0.1:4222"
	defaultDataDir = "./procfleet-data"
)

// common holds the flags every command shares.
type common struct {
	nats      string
	prefix    string
	logFormat string
	logLevel  string
	auth      cli.Auth
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.nats, "nats", cli.DefaultNATSURL(), "NATS server URL (default from NATS_URL)")
	fs.StringVar(&c.prefix, "prefix", queue.DefaultPrefix, "subject prefix")
	fs.StringVar(&c.logFormat, "log-format", "console", "console or json")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	c.auth.Register(fs)
}

func (c *common) queue() queue.Config { return queue.Config{Prefix: c.prefix} }

func newFlags(name, help string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: dispatcher %s\n\nFlags:\n", help)
		fs.PrintDefaults()
	}
	return fs
}

func cmdServe(ctx context.Context, args []string, stderr io.Writer) error {
	var c common
	fs := newFlags("serve", "serve [--nats URL | --embedded [--listen 127.0.0.1:4222] [--data DIR]] [--http ADDR [--http-token-file FILE] [--http-tls-cert PEM --http-tls-key PEM]]", stderr)
	c.register(fs)
	emb := fs.Bool("embedded", false, "run an embedded NATS server with JetStream instead of connecting to --nats")
	listen := fs.String("listen", defaultListen, "embedded server's client address (loopback only: it has no users)")
	data := fs.String("data", defaultDataDir, "embedded server's JetStream directory")
	httpAddr := fs.String("http", "", "also serve the API over HTTP on this address, e.g. 127.0.0.1:8080; a bare :8080 binds 127.0.0.1, "+
		"any other than loopback needs a token (default off)")
	httpTokenFile := fs.String("http-token-file", "", "HTTP API bearer tokens and their rights, one 'token right[,right]' a line (rights: submit, read, admin)")
	httpToken := fs.String("http-token", "", "one HTTP API bearer token with every right (prefer PROCFLEET_HTTP_TOKEN: flags are visible in ps)")
	httpCert := fs.String("http-tls-cert", "", "serve HTTPS with this PEM certificate (with --http-tls-key)")
	httpKey := fs.String("http-tls-key", "", "private key PEM of --http-tls-cert")
	partitions := fs.Int("partitions", queue.DefaultPartitions, "session partitions, fixed when the stream is created")
	schedules := fs.Bool("schedules", false, "allow delayed and periodic jobs (the server's message schedules); the server then also "+
		"allows Nats-Rollup headers on the jobs streams, so any job publisher could purge waiting jobs: only where every publisher is trusted")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this address, e.g. 127.0.0.1:9100 (default off)")
	memConsumers := fs.Bool("memory-consumers", false, "when creating the job consumers: keep their state in the server's memory, not in state files "+
		"(less server CPU per session job; a server restart loses them, agents recreate them, and delivery counts start again: see README, Performance)")
	resultsStorage := fs.String("results-storage", "", "when creating the results stream: file or memory (default: the fleet's storage, file); "+
		"memory-stored results are lost with a server restart")
	resultsMaxAge := fs.Duration("results-max-age", 0, "how long results are kept (default 24h)")
	maxQueues := fs.Int("max-queues", dispatcher.DefaultMaxQueues, "queues a submit may create on demand; beyond them a submit to a new queue is refused (409) until it is declared with dispatcher queue add")
	unroutable := fs.Duration("unroutable-after", 0, "dead-letter as unroutable a job that waited this long in a queue no agent has served for this long (default 0: jobs wait)")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	tokens, err := httpTokens(*httpTokenFile, *httpToken)
	if err != nil {
		return err
	}
	tel, err := cli.StartTelemetry(c.logFormat, c.logLevel, *metrics)
	if err != nil {
		return err
	}
	defer tel.Close()
	log, reg := tel.Log, tel.Registry
	url := c.nats
	if *emb {
		host, port, err := splitHostPort(cli.LocalAddr(*listen))
		if err != nil {
			return fmt.Errorf("--listen: %w", err)
		}
		// The embedded server has no users: whoever reaches it may read
		// and submit every job.
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Errorf("--listen %s: the embedded server has no users, so it listens on loopback only; "+
				"for a fleet across machines run nats-server with deploy/nats-server.conf and serve --nats", *listen)
		}
		unlock, err := embedded.LockStore(*data)
		if err != nil {
			return err
		}
		defer unlock()
		srv, u, err := embedded.Start(ctx, embedded.Config{Host: host, Port: port, StoreDir: *data, Logger: log.Named("nats")})
		if err != nil {
			return err
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		}()
		url = u
		log.Info("embedded NATS with JetStream", zap.String("url", u), zap.String("data", *data))
	}
	natsOpts, err := c.auth.Options()
	if err != nil {
		return err
	}
	if *emb {
		natsOpts = nil // the embedded server has no users
	}
	nc, err := cli.Connect(url, "procfleet-dispatcher", log, natsOpts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	qc := c.queue()
	qc.Partitions = *partitions
	qc.Schedules = *schedules
	qc.MemoryConsumers, qc.ResultsStorage, qc.ResultsMaxAge = *memConsumers, *resultsStorage, *resultsMaxAge
	return dispatcher.Serve(ctx, nc, dispatcher.ServeConfig{Queue: qc, HTTPAddr: *httpAddr, HTTPTokens: tokens,
		HTTPTLSCert: *httpCert, HTTPTLSKey: *httpKey, Logger: log, Registerer: reg, UnroutableAfter: *unroutable, MaxQueues: *maxQueues})
}

// httpTokens gathers the HTTP API's tokens: those of the token file, plus
// the single all-rights token of --http-token (PROCFLEET_HTTP_TOKEN).
func httpTokens(file, token string) ([]dispatcher.HTTPToken, error) {
	var tokens []dispatcher.HTTPToken
	if file != "" {
		t, err := dispatcher.ReadHTTPTokenFile(file)
		if err != nil {
			return nil, fmt.Errorf("--http-token-file: %w", err)
		}
		tokens = t
	}
	if token != "" {
		if err := dispatcher.ValidateToken(token); err != nil {
			return nil, fmt.Errorf("--http-token (PROCFLEET_HTTP_TOKEN): %w", err)
		}
		tokens = append(tokens, dispatcher.HTTPToken{Token: token, Rights: dispatcher.RightAll})
	}
	return tokens, nil
}

func splitHostPort(s string) (string, int, error) {
	host, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("bad port in %q", s)
	}
	return host, port, nil
}

func connectClient(ctx context.Context, c *common) (*dispatcher.Client, *nats.Conn, error) {
	opts, err := c.auth.Options()
	if err != nil {
		return nil, nil, err
	}
	nc, err := nats.Connect(c.nats, append([]nats.Option{nats.Name("procfleet-cli"), nats.Timeout(5 * time.Second)}, opts...)...)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot reach NATS at %s: %w", c.nats, err)
	}
	if err := cli.CheckInbox(nc, 5*time.Second); err != nil {
		nc.Close()
		return nil, nil, err
	}
	client, err := dispatcher.NewClient(ctx, nc, c.queue())
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return client, nc, nil
}

func cmdSubmit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("submit", "submit [--queue Q] [--session S] --command C [--payload JSON] [--id ID] [--at TIME | --in DUR] [--expires-in DUR] [--wait]", stderr)
	c.register(fs)
	var steer steerFlags // delay and deadline: schedule.go
	steer.register(fs)
	queueName := fs.String("queue", queue.DefaultQueue, "the job's queue (it must exist: see dispatcher queue add)")
	session := fs.String("session", "", "session id (empty: an anonymous job any agent may take)")
	command := fs.String("command", "", "the worker command to run (required)")
	payload := fs.String("payload", "null", "JSON payload")
	id := fs.String("id", "", "job id (default generated); resubmitting an id is deduplicated")
	timeout := fs.Duration("timeout", 0, "job timeout (default: the agent's)")
	attempts := fs.Int("max-attempts", 0, fmt.Sprintf("attempts before the job is dead-lettered (default %d)", queue.DefaultMaxAttempts))
	requireSession := fs.Bool("require-session", false, "fail with session_lost rather than run on a fresh worker")
	wait := fs.Bool("wait", false, "wait for the result and print it")
	waitFor := fs.Duration("wait-timeout", 60*time.Second, "with --wait: give up after this long")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *command == "" {
		fs.Usage()
		return errors.New("--command is required")
	}
	if !json.Valid([]byte(*payload)) {
		return fmt.Errorf("--payload is not valid JSON: %s", *payload)
	}
	due, err := steer.due(time.Now())
	if err != nil {
		return err
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	job := &queue.Job{ID: *id, Command: *command, Payload: json.RawMessage(*payload),
		TimeoutMS: timeout.Milliseconds(), MaxAttempts: *attempts, RequireSession: *requireSession}
	steer.apply(job)
	var jobID string
	var jobSeq uint64
	if due.IsZero() {
		jobID, jobSeq, err = client.SubmitTo(ctx, *queueName, *session, job)
	} else if *queueName != queue.DefaultQueue {
		return fmt.Errorf("--at/--in: a delayed job goes to the default queue only, not to queue %s", *queueName)
	} else {
		// Its stream sequence comes when it fires: wait for any.
		jobID, err = client.SubmitAt(ctx, *session, job, due)
	}
	if err != nil {
		return err
	}
	if !*wait {
		fmt.Fprintln(stdout, jobID)
		return nil
	}
	if !due.IsZero() {
		*waitFor += time.Until(due) // the wait starts when the job is due
	}
	wctx, cancel := context.WithTimeout(ctx, *waitFor)
	defer cancel()
	res, err := client.ResultOn(wctx, *queueName, jobID, jobSeq, func(agents int) {
		if agents == 0 {
			fmt.Fprintf(stderr, "warning: no agent is registered; job %s is queued and will run when an agent serving queue %s starts\n", jobID, *queueName)
		} else {
			fmt.Fprintf(stderr, "warning: no agent serves queue %s (%d agents serve other queues); job %s is queued and will run when an agent serving %s starts\n",
				*queueName, agents, jobID, *queueName)
		}
		fmt.Fprintf(stderr, "         (a dispatcher run with --unroutable-after dead-letters it as unroutable after that long)\n")
	})
	if err != nil {
		return fmt.Errorf("waiting for job %s: %w", jobID, err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if !res.OK {
		return exitCode(2)
	}
	return nil
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("status", "status [--json]", stderr)
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := client.Status(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	return st.WriteTable(stdout)
}

func cmdDLQ(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("dlq", "dlq list [--json] [--limit N] | dlq replay <seq>...", stderr)
	c.register(fs)
	asJSON := fs.Bool("json", false, "list: print JSON")
	limit := fs.Int("limit", 100, "list: at most this many")
	// Flags may stand anywhere: dlq replay 7 --user dispatcher works.
	if err := cli.ParseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("dlq needs list or replay")
	}
	sub, rest := fs.Arg(0), fs.Args()[1:]
	switch {
	case sub != "list" && sub != "replay":
		return fmt.Errorf("dlq: unknown subcommand %q (list or replay)", sub)
	case sub == "list" && len(rest) > 0:
		return fmt.Errorf("dlq list: unexpected argument %q (it takes flags only)", rest[0])
	case sub == "replay" && len(rest) == 0:
		return errors.New("dlq replay needs at least one sequence number (see dlq list)")
	}
	seqs := make([]uint64, len(rest))
	for i, a := range rest {
		seq, err := strconv.ParseUint(a, 10, 64)
		if err != nil || seq == 0 {
			return fmt.Errorf("dlq replay: bad sequence %q (a positive number from dlq list)", a)
		}
		seqs[i] = seq
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	t := client.Topology()
	switch sub {
	case "list":
		entries, err := t.DeadLetters(ctx, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(entries)
		}
		if len(entries) == 0 {
			fmt.Fprintln(stdout, "no dead letters")
			return nil
		}
		fmt.Fprintf(stdout, "%-6s  %-24s  %-10s  %-12s  %-10s  %-8s  %s\n", "SEQ", "JOB", "QUEUE", "SESSION", "KIND", "ATTEMPTS", "ERROR")
		for _, e := range entries {
			fmt.Fprintf(stdout, "%-6d  %-24s  %-10s  %-12s  %-10s  %-8d  %s\n", e.Seq, e.JobID, queue.NameOrDefault(e.Queue), e.Session, e.Kind, e.Attempts, e.Error)
		}
		return nil
	case "replay":
		for _, seq := range seqs {
			if err := t.ReplayDeadLetter(ctx, seq); err != nil {
				return fmt.Errorf("replay %d: %w", seq, err)
			}
			fmt.Fprintf(stdout, "replayed %d\n", seq)
		}
		return nil
	default:
		return fmt.Errorf("dlq: unknown subcommand %q (list or replay)", sub)
	}
}

// parseLocal parses the flags of a command that runs its own fleet (demo,
// bench, chaos, up) and builds its console logger at the level flag, which
// is read after parsing so PROCFLEET_LOG_LEVEL applies too.
func parseLocal(fs *flag.FlagSet, args []string, level *string) (*zap.Logger, error) {
	if err := cli.Parse(fs, args); err != nil {
		return nil, err
	}
	return cli.NewLogger("console", *level)
}

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", "demo [--agents N] [--workers N] [--sessions N] [--jobs N] [--anonymous N]", stderr)
	var cfg demo.Config
	fs.IntVar(&cfg.Agents, "agents", demo.DefaultAgents, "agents")
	fs.IntVar(&cfg.Workers, "workers", demo.DefaultWorkers, "workers per agent")
	fs.IntVar(&cfg.Sessions, "sessions", demo.DefaultSessions, "sessions")
	fs.IntVar(&cfg.JobsPerSession, "jobs", demo.DefaultJobsPerSession, "jobs per session")
	fs.IntVar(&cfg.Anonymous, "anonymous", demo.DefaultAnonymous, "jobs without a session")
	var workerCmd cli.Argv
	fs.Var(&workerCmd, "worker-cmd", "worker command (default: python3 examples/programs_worker.py)")
	logLevel := fs.String("log-level", "warn", "fleet log level")
	log, err := parseLocal(fs, args, logLevel)
	if err != nil {
		return err
	}
	// 0 would quietly become the default.
	for flag, n := range map[string]int{"--agents": cfg.Agents, "--workers": cfg.Workers, "--sessions": cfg.Sessions, "--jobs": cfg.JobsPerSession} {
		if n < 1 {
			return fmt.Errorf("%s must be at least 1, got %d", flag, n)
		}
	}
	if cfg.Anonymous == 0 {
		cfg.Anonymous = -1 // none
	}
	cfg.WorkerCmd = workerCmd
	cfg.Out, cfg.Progress, cfg.Logger = stdout, stderr, log
	_, err = demo.Run(ctx, cfg)
	return err
}
