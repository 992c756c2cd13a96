// Package demo is `dispatcher demo`: an embedded server, a few in-process
// agents running the example Python worker, and a mixed workload, then a
// summary of throughput, latency and session affinity. It is the README's
// first command.
package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// ErrInvalidConfig is wrapped by every error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("demo: invalid config")

// Defaults of Config, which the command's flags show too.
const (
	DefaultAgents         = 2
	DefaultWorkers        = 2
	DefaultSessions       = 100
	DefaultJobsPerSession = 20
	DefaultAnonymous      = 1000
)

// Config configures Run.
type Config struct {
	// Agents is the number of in-process agents. Default 2.
	Agents int
	// Workers is the pool size of each agent. Default 2.
	Workers int
	// Sessions and JobsPerSession shape the session workload. Defaults 100
	// and 20.
	Sessions       int
	JobsPerSession int
	// Anonymous is the number of jobs without a session. Default 1000;
	// negative: none.
	Anonymous int
	// WorkerCmd is the worker of queue "programs", which runs the session
	// jobs. Default: python3 examples/programs_worker.py, found from the
	// current directory upwards.
	WorkerCmd []string
	// EchoCmd is the worker of queue "echo", which runs the anonymous jobs.
	// Default: python3 examples/echo_worker.py.
	EchoCmd []string
	// Out receives the summary; Progress the progress bar. Defaults stdout
	// and stderr.
	Out, Progress io.Writer
	// Logger receives the fleet's logs. Default: none.
	Logger *zap.Logger
}

// Report is what the demo measured.
type Report struct {
	Jobs        int
	Elapsed     time.Duration
	Throughput  float64
	Latency     localfleet.Percentiles
	Sessions    int
	AffinityOK  int // sessions served by exactly one (agent, pid), in order
	Failed      int // failed, or ran on another queue than submitted to
	SessionRuns []SessionRun
	PerQueue    map[string]int // ok jobs by the queue they ran on
}

// SessionRun says who served one session.
type SessionRun struct {
	Session string
	Agents  []string // "agent/pid" pairs that served it
	InOrder bool
}

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Agents == 0 {
		c.Agents = DefaultAgents
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.JobsPerSession == 0 {
		c.JobsPerSession = DefaultJobsPerSession
	}
	if c.Anonymous == 0 {
		c.Anonymous = DefaultAnonymous
	}
	c.Out, c.Progress, c.Logger = localfleet.OutputDefaults(c.Out, c.Progress, os.Stderr, c.Logger)
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	if c.Agents < 0 || c.Workers < 0 || c.Sessions < 0 || c.JobsPerSession < 0 {
		return fmt.Errorf("%w: Agents, Workers, Sessions and JobsPerSession cannot be negative", ErrInvalidConfig)
	}
	return nil
}

// Run starts an embedded NATS server with JetStream in a temporary
// directory, a few agents running the example Python worker, and a mixed
// workload; it prints progress and a summary: throughput, latency
// percentiles and the agent and worker behind each session.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(cfg.WorkerCmd) == 0 {
		p, err := localfleet.FindExample("programs_worker.py")
		if err != nil {
			return nil, err
		}
		cfg.WorkerCmd = []string{"python3", p}
	}
	if len(cfg.EchoCmd) == 0 {
		p, err := localfleet.FindExample("echo_worker.py")
		if err != nil {
			return nil, err
		}
		cfg.EchoCmd = []string{"python3", p}
	}
	// Two queues, two kinds of worker, one pool each in every agent.
	acfg := agent.Config{Logger: cfg.Logger}
	pool := func(cmd []string) agent.QueueConfig {
		var q agent.QueueConfig
		q.Pool.Size = cfg.Workers
		q.Pool.Worker = worker.Config{Command: cmd, StartupTimeout: 20 * time.Second}
		return q
	}
	programs, echo := pool(cfg.WorkerCmd), pool(cfg.EchoCmd)
	programs.Name, echo.Name = "programs", "echo"
	acfg.Queues = []agent.QueueConfig{programs, echo}
	f, err := localfleet.Start(ctx, localfleet.Config{
		TempPattern: "procfleet-demo-", Name: "procfleet-demo", Agent: acfg,
		// The agents start below, after the announcement.
		BalanceTimeout: -1,
	})
	if err != nil {
		return nil, err
	}
	defer f.Stop(context.WithoutCancel(ctx))
	fmt.Fprintf(cfg.Progress, "embedded NATS with JetStream at %s\n", f.URL)
	client := f.Client

	fmt.Fprintf(cfg.Progress, "starting %d agents, each serving queue programs (%d x %s) and queue echo (%d x %s)\n",
		cfg.Agents, cfg.Workers, strings.Join(cfg.WorkerCmd, " "), cfg.Workers, strings.Join(cfg.EchoCmd, " "))
	for i := range cfg.Agents {
		acfg.Name = fmt.Sprintf("agent-%d", i+1)
		if _, err := f.StartAgent(ctx, acfg); err != nil {
			return nil, err
		}
	}
	// Let the agents settle the partitions between them before load.
	bctx, cancel := context.WithTimeout(ctx, localfleet.DefaultBalanceTimeout)
	err = localfleet.WaitBalanced(bctx, f.Agents(), f.Queue().Partitions)
	cancel()
	if err != nil {
		return nil, err
	}

	col, err := client.Collect()
	if err != nil {
		return nil, err
	}
	defer col.Close()

	type sent struct {
		session string
		seq     int
		at      time.Time
	}
	var subs []dispatcher.Submission
	meta := map[string]sent{}
	run := time.Now().UnixNano()
	for s := range cfg.Sessions {
		session := fmt.Sprintf("demo-%d", s)
		for j := range cfg.JobsPerSession {
			id := fmt.Sprintf("d%x-s%d-%d", run, s, j)
			subs = append(subs, dispatcher.Submission{Queue: "programs", Session: session, Job: &queue.Job{ID: id, Command: "session_info", Payload: json.RawMessage(fmt.Sprintf(`{"seq":%d}`, j))}})
			meta[id] = sent{session: session, seq: j}
		}
	}
	anonymous := max(cfg.Anonymous, 0)
	for i := range anonymous {
		id := fmt.Sprintf("d%x-a%d", run, i)
		subs = append(subs, dispatcher.Submission{Queue: "echo", Job: &queue.Job{ID: id, Command: "echo", Payload: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))}})
		meta[id] = sent{seq: i}
	}
	// Interleave sessions so that partitions fill evenly, keeping each
	// session's own order.
	slices.SortStableFunc(subs, func(a, b dispatcher.Submission) int { return meta[a.Job.ID].seq - meta[b.Job.ID].seq })
	for _, s := range subs {
		col.Expect(s.Job.ID)
	}

	start := time.Now()
	fmt.Fprintf(cfg.Progress, "submitting %d jobs (queue programs: %d sessions x %d; queue echo: %d anonymous)\n", len(subs), cfg.Sessions, cfg.JobsPerSession, anonymous)
	for i := range subs {
		m := meta[subs[i].Job.ID]
		m.at = time.Now()
		meta[subs[i].Job.ID] = m
	}
	if err := client.SubmitBatch(ctx, subs); err != nil {
		return nil, err
	}
	bar := newProgressBar(cfg.Progress)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	err = col.Wait(wctx, bar.update)
	bar.finish()
	if err != nil {
		return nil, err
	}
	elapsed := time.Since(start)

	rep := &Report{Jobs: len(subs), Elapsed: elapsed, Throughput: float64(len(subs)) / elapsed.Seconds(), Sessions: cfg.Sessions,
		PerQueue: map[string]int{}}
	var lat []time.Duration
	served := map[string]map[string]bool{}
	inOrder := map[string]bool{}
	for _, s := range subs {
		m := meta[s.Job.ID]
		r, at, _ := col.Result(s.Job.ID)
		lat = append(lat, at.Sub(m.at))
		if !r.OK || r.Queue != s.Queue {
			rep.Failed++
			continue
		}
		rep.PerQueue[r.Queue]++
		if m.session == "" {
			continue
		}
		var info struct {
			PID   int `json:"pid"`
			Count int `json:"count"`
		}
		_ = json.Unmarshal(r.Result, &info)
		if served[m.session] == nil {
			served[m.session] = map[string]bool{}
			inOrder[m.session] = true
		}
		served[m.session][fmt.Sprintf("%s/%d", r.Agent, info.PID)] = true
		if info.Count != m.seq+1 {
			inOrder[m.session] = false
		}
	}
	rep.Latency = localfleet.PercentilesOf(lat)
	for s := range cfg.Sessions {
		session := fmt.Sprintf("demo-%d", s)
		var who []string
		for k := range served[session] {
			who = append(who, k)
		}
		slices.Sort(who)
		run := SessionRun{Session: session, Agents: who, InOrder: inOrder[session]}
		if len(who) == 1 && run.InOrder {
			rep.AffinityOK++
		}
		rep.SessionRuns = append(rep.SessionRuns, run)
	}
	rep.write(cfg.Out)
	if rep.Failed > 0 || rep.AffinityOK != rep.Sessions {
		return rep, errors.New("demo: some jobs failed or a session was served by more than one worker")
	}
	return rep, nil
}

func (r *Report) write(w io.Writer) {
	fmt.Fprintf(w, "\nprocfleet demo summary\n")
	fmt.Fprintf(w, "  jobs:        %d (%d failed)\n", r.Jobs, r.Failed)
	fmt.Fprintf(w, "  elapsed:     %s\n", r.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  throughput:  %.0f jobs/s\n", r.Throughput)
	fmt.Fprintf(w, "  queues:      programs %d ok (programs_worker.py), echo %d ok (echo_worker.py)\n", r.PerQueue["programs"], r.PerQueue["echo"])
	fmt.Fprintf(w, "  latency:     p50 %s  p90 %s  p99 %s  max %s (submit to result, queued behind the batch)\n",
		r.Latency.P50.Round(time.Microsecond), r.Latency.P90.Round(time.Microsecond), r.Latency.P99.Round(time.Microsecond), r.Latency.Max.Round(time.Microsecond))
	fmt.Fprintf(w, "  affinity:    %d/%d sessions served by exactly one agent/worker, in FIFO order\n", r.AffinityOK, r.Sessions)
	fmt.Fprintf(w, "\n  %-10s  %-28s  %s\n", "SESSION", "AGENT/WORKER PID", "ORDER")
	// The first sessions, and every one that broke affinity or order.
	const shown = 12
	hidden := 0
	for i, s := range r.SessionRuns {
		order := "fifo"
		if !s.InOrder {
			order = "OUT OF ORDER"
		}
		if i >= shown && s.InOrder && len(s.Agents) == 1 {
			hidden++
			continue
		}
		fmt.Fprintf(w, "  %-10s  %-28s  %s\n", s.Session, strings.Join(s.Agents, ","), order)
	}
	if hidden > 0 {
		fmt.Fprintf(w, "  ... and %d more sessions, each on one agent/worker, in order\n", hidden)
	}
}

type progressBar struct {
	w    io.Writer
	last time.Time
	done int
	tot  int
}

func newProgressBar(w io.Writer) *progressBar { return &progressBar{w: w} }

func (p *progressBar) update(done, total int) {
	p.done, p.tot = done, total
	if time.Since(p.last) < 100*time.Millisecond && done != total {
		return
	}
	p.last = time.Now()
	const width = 40
	filled := 0
	if total > 0 {
		filled = done * width / total
	}
	fmt.Fprintf(p.w, "\r  [%s%s] %d/%d jobs", strings.Repeat("#", filled), strings.Repeat(".", width-filled), done, total)
}

func (p *progressBar) finish() { fmt.Fprintln(p.w) }
