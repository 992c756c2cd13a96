package dispatcher

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// BenchConfig configures RunBench. The zero value runs the README's
// benchmark: an embedded server, one agent with four echo workers, 20,000
// anonymous jobs of 100 bytes submitted all at once.
type BenchConfig struct {
	// NATSURL is the server to use. Default "": an embedded server with
	// JetStream in a temporary directory, in this process. With a URL the
	// bench creates its own topology under a fresh prefix and deletes it
	// afterwards.
	NATSURL string
	// Agents is the number of agents, all in this process. Default 1.
	Agents int
	// Workers is each agent's pool size, and the floor's worker count is
	// Agents*Workers. Default 4.
	Workers int
	// Jobs is how many jobs each measurement runs. Default 20000.
	Jobs int
	// Sessions spreads the jobs round-robin over this many sessions. Default
	// 0: anonymous jobs.
	Sessions int
	// PayloadSize is the size in bytes of each job's JSON payload. Default
	// 100; at least 8.
	PayloadSize int
	// Inflight bounds the jobs submitted and not yet finished: 1 is a closed
	// loop with one job at a time. Default 0: no bound, every job is
	// submitted as fast as the client can publish.
	Inflight int
	// Capacity is each agent's Capacity (jobs held at once). Default 0:
	// the agent's default, twice its pool size.
	Capacity int
	// WorkerCmd is the worker. Default: python3 examples/echo_worker.py,
	// found from the current directory upwards.
	WorkerCmd []string
	// Command is the worker command each job runs. Default "echo".
	Command string
	// NoFloor skips the floor measurement (the fleet/floor ratio is then
	// not reported). Default false.
	NoFloor bool
	// NoFleet skips the fleet measurement. Default false.
	NoFleet bool
	// StartupWorkers, when above 0, adds a start-up measurement: a pool of
	// this many workers, each delayed by StartupDelay before it runs
	// WorkerCmd, started with StartConcurrency equal to its size. Default 0
	// (off); the command line's default is 8.
	StartupWorkers int
	// StartupDelay is the start-up measurement's per-worker delay. Default
	// 1s.
	StartupDelay time.Duration
	// CPUProfile, when set, receives a CPU profile of the fleet measurement.
	// Default nil (no profile).
	CPUProfile io.Writer
	// Timeout bounds each measurement. Default: 2 minutes plus 10ms per job.
	Timeout time.Duration
	// Out receives the table; Progress the progress lines. Defaults stdout
	// and stderr; set Progress to io.Discard to silence it.
	Out, Progress io.Writer
	// Logger receives the fleet's logs. Default: none.
	Logger *zap.Logger
}

// BenchReport is what RunBench measured.
type BenchReport struct {
	Agents      int         `json:"agents"`
	Workers     int         `json:"workers_per_agent"`
	Jobs        int         `json:"jobs"`
	Sessions    int         `json:"sessions"`
	PayloadSize int         `json:"payload_size"`
	Inflight    int         `json:"inflight"`
	Capacity    int         `json:"capacity,omitempty"`
	WorkerCmd   []string    `json:"worker_cmd"`
	NATS        string      `json:"nats"`
	Machine     Machine     `json:"machine"`
	Floor       *BenchRun   `json:"floor,omitempty"`
	Fleet       *BenchRun   `json:"fleet,omitempty"`
	Ratio       float64     `json:"fleet_floor_ratio,omitempty"` // fleet throughput / floor throughput
	Startup     *StartupRun `json:"startup,omitempty"`
}

// BenchRun is one measured row of the table.
type BenchRun struct {
	Name       string  `json:"name"`
	Jobs       int     `json:"jobs"`
	Failed     int     `json:"failed"`
	Throughput float64 `json:"jobs_per_sec"`
	// Elapsed runs from the first submission to the last result.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Latency is submission to result, per job. With Inflight 0 it
	// includes the time a job waits behind the ones submitted before it.
	Latency Percentiles `json:"latency_ns"`
	// CPUSelf is the user+system CPU time of this process during the run
	// (getrusage): the driver loop for the floor; for the fleet the
	// in-process agents, the bench client and, when embedded, the NATS
	// server.
	CPUSelf time.Duration `json:"cpu_self_ns"`
	// CPUWorkers is the user+system CPU time the worker processes spent
	// during the run (/proc/<pid>/stat), start-up excluded.
	CPUWorkers time.Duration `json:"cpu_workers_ns"`
	// PeakRSS is the largest resident set size of this process sampled
	// during the run (workers not included).
	PeakRSS int64 `json:"peak_rss_bytes"`
}

// CPUPer1k returns this process's and the workers' CPU seconds per 1,000
// jobs.
func (r *BenchRun) CPUPer1k() (self, workers float64) {
	if r.Jobs == 0 {
		return 0, 0
	}
	k := float64(r.Jobs) / 1000
	return r.CPUSelf.Seconds() / k, r.CPUWorkers.Seconds() / k
}

// StartupRun is the start-up measurement: how long pool.Start took until
// every worker was ready.
type StartupRun struct {
	Workers int           `json:"workers"`
	Delay   time.Duration `json:"delay_ns"`
	Ready   time.Duration `json:"ready_ns"`
	// ReadyOne is the same start with a single worker: the part of Ready
	// that concurrency cannot remove.
	ReadyOne time.Duration `json:"ready_one_ns"`
}

// Machine describes where the bench ran.
type Machine struct {
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	CPUs   int    `json:"cpus"`
	Model  string `json:"cpu_model,omitempty"`
	Go     string `json:"go"`
	Python string `json:"python,omitempty"`
}

func (c *BenchConfig) setDefaults() error {
	if c.Agents == 0 {
		c.Agents = 1
	}
	if c.Workers == 0 {
		c.Workers = 4
	}
	if c.Jobs == 0 {
		c.Jobs = 20000
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = 100
	}
	if c.Command == "" {
		c.Command = "echo"
	}
	if c.StartupDelay == 0 {
		c.StartupDelay = time.Second
	}
	if c.Timeout == 0 {
		c.Timeout = 2*time.Minute + time.Duration(c.Jobs)*10*time.Millisecond
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Progress == nil {
		c.Progress = os.Stderr
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	switch {
	case c.Agents < 0:
		return errors.New("bench: Agents cannot be negative")
	case c.Workers < 0:
		return errors.New("bench: Workers cannot be negative")
	case c.Jobs < 0:
		return errors.New("bench: Jobs cannot be negative")
	case c.Sessions < 0:
		return errors.New("bench: Sessions cannot be negative")
	case c.PayloadSize < 8:
		return fmt.Errorf("bench: PayloadSize must be at least 8 bytes, got %d", c.PayloadSize)
	case c.Inflight < 0:
		return errors.New("bench: Inflight cannot be negative")
	case c.Capacity < 0:
		return errors.New("bench: Capacity cannot be negative")
	case c.StartupWorkers < 0:
		return errors.New("bench: StartupWorkers cannot be negative")
	case c.StartupDelay < 0:
		return errors.New("bench: StartupDelay cannot be negative")
	}
	if len(c.WorkerCmd) == 0 {
		p, err := FindExample("echo_worker.py")
		if err != nil {
			return err
		}
		c.WorkerCmd = []string{realPython(), p}
	}
	return nil
}

// realPython returns the interpreter python3 runs, so that a version
// manager's shim (pyenv's is a shell script that takes a good part of a
// second) is not paid again by every worker the bench starts.
func realPython() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "python3", "-c", "import sys; print(sys.executable)").Output()
	if p := strings.TrimSpace(string(out)); err == nil && filepath.IsAbs(p) {
		return p
	}
	return "python3"
}

// RunBench measures the floor (the same worker program and number of
// processes driven by a plain Go loop over pipes: worker.Start and
// worker.Call, one goroutine per worker) and then the fleet (jobs through
// NATS JetStream, in-process agents and their pools), and writes one table
// for both. With StartupWorkers set it also times a pool start.
func RunBench(ctx context.Context, cfg BenchConfig) (*BenchReport, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rep := &BenchReport{
		Agents: cfg.Agents, Workers: cfg.Workers, Jobs: cfg.Jobs, Sessions: cfg.Sessions,
		PayloadSize: cfg.PayloadSize, Inflight: cfg.Inflight, Capacity: cfg.Capacity, WorkerCmd: cfg.WorkerCmd,
		NATS: natsEmbedded, Machine: machine(ctx, cfg.WorkerCmd),
	}
	if cfg.NATSURL != "" {
		rep.NATS = cfg.NATSURL
	}
	w := newWorkload(&cfg)
	if !cfg.NoFloor {
		fmt.Fprintf(cfg.Progress, "floor: %d x %s over pipes\n", cfg.Agents*cfg.Workers, strings.Join(cfg.WorkerCmd, " "))
		run, err := runFloor(ctx, &cfg, w)
		if err != nil {
			return nil, fmt.Errorf("bench: floor: %w", err)
		}
		rep.Floor = run
	}
	if !cfg.NoFleet {
		run, err := runFleet(ctx, &cfg, w)
		if err != nil {
			return nil, fmt.Errorf("bench: fleet: %w", err)
		}
		rep.Fleet = run
	}
	if rep.Floor != nil && rep.Fleet != nil && rep.Floor.Throughput > 0 {
		rep.Ratio = rep.Fleet.Throughput / rep.Floor.Throughput
	}
	if cfg.StartupWorkers > 0 {
		fmt.Fprintf(cfg.Progress, "start-up: %d workers, each %s late\n", cfg.StartupWorkers, cfg.StartupDelay)
		run, err := runStartup(ctx, &cfg)
		if err != nil {
			return nil, fmt.Errorf("bench: start-up: %w", err)
		}
		rep.Startup = run
	}
	rep.WriteTable(cfg.Out)
	return rep, nil
}

// workload is the job list both measurements run: job i belongs to session
// i mod Sessions, or to none.
type workload struct {
	n        int
	sessions []string // empty: anonymous
	payload  json.RawMessage
}

func newWorkload(cfg *BenchConfig) *workload {
	w := &workload{n: cfg.Jobs}
	for s := range cfg.Sessions {
		w.sessions = append(w.sessions, "bench-"+strconv.Itoa(s))
	}
	// {"d":"xxx…"}: exactly PayloadSize bytes of JSON.
	var b bytes.Buffer
	b.WriteString(`{"d":"`)
	for i := range cfg.PayloadSize - 8 {
		b.WriteByte('a' + byte(i%26))
	}
	b.WriteString(`"}`)
	w.payload = b.Bytes()
	return w
}

// sessionOf returns job i's session index, or -1.
func (w *workload) sessionOf(i int) int {
	if len(w.sessions) == 0 {
		return -1
	}
	return i % len(w.sessions)
}

// pacer hands out job indexes within the in-flight bound and records when
// each was submitted and when it finished.
type pacer struct {
	n         int
	sem       chan struct{} // nil: unbounded
	submitted []int64       // ns since start, per job
	finished  []int64       // ns since start, per job; 0: not yet
	start     time.Time
	left      atomic.Int64
	done      chan struct{}
	failed    atomic.Int64
}

func newPacer(n, inflight int) *pacer {
	p := &pacer{
		n: n, submitted: make([]int64, n), finished: make([]int64, n),
		done: make(chan struct{}),
	}
	if inflight > 0 {
		p.sem = make(chan struct{}, inflight)
	}
	p.left.Store(int64(n))
	if n == 0 {
		close(p.done)
	}
	return p
}

func (p *pacer) begin() { p.start = time.Now() }

// acquire waits for room to submit job i and stamps its submission.
func (p *pacer) acquire(ctx context.Context, i int) error {
	if p.sem != nil {
		select {
		case p.sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	p.submitted[i] = int64(time.Since(p.start))
	return nil
}

// finish records job i's result; a duplicate (a redelivered job's second
// result) is ignored. It is safe for concurrent use on distinct i, and
// finish for one i runs on one goroutine at a time.
func (p *pacer) finish(i int, ok bool) {
	if i < 0 || i >= p.n || p.finished[i] != 0 {
		return
	}
	p.finished[i] = max(int64(time.Since(p.start)), 1)
	if !ok {
		p.failed.Add(1)
	}
	if p.sem != nil {
		<-p.sem
	}
	if p.left.Add(-1) == 0 {
		close(p.done)
	}
}

func (p *pacer) wait(ctx context.Context, progress io.Writer, what string) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			fmt.Fprintf(progress, "\r  %s: %d/%d jobs\n", what, p.n, p.n)
			return nil
		case <-t.C:
			fmt.Fprintf(progress, "\r  %s: %d/%d jobs", what, p.n-int(p.left.Load()), p.n)
		case <-ctx.Done():
			fmt.Fprintln(progress)
			return fmt.Errorf("%d of %d jobs unfinished: %w", p.left.Load(), p.n, ctx.Err())
		}
	}
}

// result fills run from the stamps. Call it only once every job finished.
func (p *pacer) result(name string, run *BenchRun) *BenchRun {
	run.Name, run.Jobs, run.Failed = name, p.n, int(p.failed.Load())
	if p.n == 0 {
		return run
	}
	lat := make([]time.Duration, p.n)
	var first, last int64 = p.submitted[0], 0
	for i := range p.n {
		lat[i] = time.Duration(p.finished[i] - p.submitted[i])
		first = min(first, p.submitted[i])
		last = max(last, p.finished[i])
	}
	run.Elapsed = time.Duration(last - first)
	if run.Elapsed > 0 {
		run.Throughput = float64(p.n) / run.Elapsed.Seconds()
	}
	run.Latency = percentiles(lat)
	return run
}

// meter samples this process's CPU and peak RSS, and the workers' CPU,
// over one measurement.
type meter struct {
	cpu0    time.Duration
	wcpu0   map[int]time.Duration
	peak    atomic.Int64
	stop    chan struct{}
	stopped chan struct{}
}

func startMeter(pids []int) *meter {
	m := &meter{cpu0: selfCPU(), wcpu0: map[int]time.Duration{}, stop: make(chan struct{}), stopped: make(chan struct{})}
	for _, pid := range pids {
		m.wcpu0[pid] = procCPU(pid)
	}
	m.peak.Store(selfRSS())
	go func() {
		defer close(m.stopped)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				if r := selfRSS(); r > m.peak.Load() {
					m.peak.Store(r)
				}
			}
		}
	}()
	return m
}

// end stops the meter and fills run's CPU and RSS figures. Worker CPU is
// read before the workers stop, so their shutdown is not counted.
func (m *meter) end(run *BenchRun) {
	close(m.stop)
	<-m.stopped
	run.CPUSelf = selfCPU() - m.cpu0
	for pid, c0 := range m.wcpu0 {
		if c := procCPU(pid); c >= c0 {
			run.CPUWorkers += c - c0
		}
	}
	run.PeakRSS = max(m.peak.Load(), selfRSS())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times; 100 on every
// Linux platform Go supports.
const clockTick = 100

// procCPU reads utime+stime of pid; 0 if it cannot.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses; fields resume
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTick
}

// selfRSS is VmRSS of this process in bytes.
func selfRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// runFloor drives Agents*Workers worker processes directly: one goroutine
// per worker, each running worker.Call in a loop. Session jobs go to a
// fixed worker per session, the way the fleet keeps affinity; anonymous
// jobs to whichever worker is free.
func runFloor(ctx context.Context, cfg *BenchConfig, w *workload) (*BenchRun, error) {
	n := cfg.Agents * cfg.Workers
	workers := make([]*worker.Worker, n)
	var startErr error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk, err := worker.Start(ctx, worker.Config{
				ID: "floor-" + strconv.Itoa(i), Command: cfg.WorkerCmd, StartupTimeout: 30 * time.Second,
				Logger: cfg.Logger,
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				startErr = errors.Join(startErr, err)
				return
			}
			workers[i] = wk
		}()
	}
	wg.Wait()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for _, wk := range workers {
			if wk != nil {
				_ = wk.Stop(sctx)
			}
		}
	}()
	if startErr != nil {
		return nil, startErr
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	// One line per worker for session jobs (affinity), one shared line
	// for anonymous ones. Buffered for every job, so the feeder never
	// waits on a worker.
	lines := make([]chan int, n)
	if len(w.sessions) == 0 {
		shared := make(chan int, w.n)
		for i := range lines {
			lines[i] = shared
		}
	} else {
		for i := range lines {
			lines[i] = make(chan int, w.n)
		}
	}
	p := newPacer(w.n, cfg.Inflight)
	pids := make([]int, n)
	for i, wk := range workers {
		pids[i] = wk.PID()
	}
	var callErr atomic.Pointer[error]
	var loops sync.WaitGroup
	for i, wk := range workers {
		loops.Add(1)
		go func() {
			defer loops.Done()
			seen := map[int]bool{}
			c := &worker.Call{Command: cfg.Command, Attempt: 1, Payload: w.payload}
			for {
				var j int
				select {
				case j = <-lines[i]:
				case <-ctx.Done():
					return
				}
				c.JobID = "floor-" + strconv.Itoa(j)
				c.Session, c.NewSession = "", false
				if s := w.sessionOf(j); s >= 0 {
					c.Session, c.NewSession = w.sessions[s], !seen[s]
					seen[s] = true
				}
				c.Deadline = time.Now().Add(30 * time.Second)
				res, err := wk.Call(ctx, c)
				if err != nil {
					callErr.CompareAndSwap(nil, &err)
					cancel()
					return
				}
				p.finish(j, res.OK)
			}
		}()
	}

	m := startMeter(pids)
	p.begin()
	loops.Add(1)
	go func() {
		defer loops.Done()
		for j := range w.n {
			if p.acquire(ctx, j) != nil {
				return
			}
			line := lines[0]
			if s := w.sessionOf(j); s >= 0 {
				line = lines[s%n]
			}
			line <- j
		}
	}()
	err := p.wait(ctx, cfg.Progress, "floor")
	var run BenchRun
	m.end(&run)
	cancel()
	loops.Wait()
	if e := callErr.Load(); e != nil {
		return nil, *e
	}
	if err != nil {
		return nil, err
	}
	return p.result("floor (pipes)", &run), nil
}

// runFleet runs the workload through NATS and in-process agents.
func runFleet(ctx context.Context, cfg *BenchConfig, w *workload) (*BenchRun, error) {
	url := cfg.NATSURL
	qcfg := queue.Config{}
	if url == "" {
		_, u, stop, err := embedded.StartTemp(ctx, "procfleet-bench-", cfg.Logger.Named("nats"))
		if err != nil {
			return nil, err
		}
		defer stop()
		url = u
	} else {
		// A prefix of its own, so that the bench neither sees nor
		// disturbs a fleet on the same server.
		qcfg.Prefix = "bench" + strings.ToLower(nuid.Next()[:8])
	}

	nc, err := nats.Connect(url, nats.Name("procfleet-bench"))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", url, err)
	}
	defer nc.Close()
	var pubErr atomic.Pointer[error]
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			pubErr.CompareAndSwap(nil, &err)
		}))
	if err != nil {
		return nil, err
	}
	topo, err := queue.Ensure(ctx, js, qcfg)
	if err != nil {
		return nil, err
	}
	if cfg.NATSURL != "" {
		defer deleteTopology(context.WithoutCancel(ctx), topo)
	}
	qcfg = topo.Config

	fmt.Fprintf(cfg.Progress, "fleet: NATS %s, %d agent(s) x %d workers\n", url, cfg.Agents, cfg.Workers)
	var agents []*agent.Agent
	var conns []*nats.Conn
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for _, a := range agents {
			_ = a.Stop(sctx)
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range cfg.Agents {
		anc, err := nats.Connect(url, nats.Name(fmt.Sprintf("procfleet-bench-agent-%d", i+1)))
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", url, err)
		}
		conns = append(conns, anc)
		acfg := agent.Config{Name: fmt.Sprintf("bench-agent-%d", i+1), Queue: qcfg, Logger: cfg.Logger}
		acfg.Pool.Size = cfg.Workers
		acfg.Capacity = cfg.Capacity
		acfg.Pool.Worker = worker.Config{Command: cfg.WorkerCmd, StartupTimeout: 30 * time.Second}
		a, err := agent.New(anc, acfg)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
		if err := a.Start(ctx); err != nil {
			return nil, err
		}
	}
	if err := waitOwned(ctx, agents, qcfg.Partitions); err != nil {
		return nil, err
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	p := newPacer(w.n, cfg.Inflight)
	run := strings.ToLower(nuid.Next()[:10])
	prefix := "b" + run + "-"
	resultPrefix := qcfg.ResultSubject("")
	okMark := []byte(`"ok":true`)
	// The result subject carries the job id, and the id carries the job's
	// index: no decoding beyond a look for ok:true.
	sub, err := nc.Subscribe(qcfg.ResultSubject("*"), func(m *nats.Msg) {
		id, found := strings.CutPrefix(m.Subject, resultPrefix)
		if !found {
			return
		}
		idx, found := strings.CutPrefix(id, prefix)
		if !found {
			return
		}
		i, err := strconv.Atoi(idx)
		if err != nil {
			return
		}
		p.finish(i, bytes.Contains(m.Data, okMark))
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, err
	}

	var pids []int
	for _, a := range agents {
		for _, ws := range a.Pool().Stats().Workers {
			pids = append(pids, ws.PID)
		}
	}
	var prof bool
	if cfg.CPUProfile != nil {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		prof = true
	}
	m := startMeter(pids)
	p.begin()
	subErr := make(chan error, 1)
	go func() {
		subErr <- submitAll(ctx, js, qcfg, cfg, w, p, prefix)
	}()
	err = p.wait(ctx, cfg.Progress, "fleet")
	var res BenchRun
	m.end(&res)
	if prof {
		pprof.StopCPUProfile()
	}
	cancel()
	// The submitter's stamps are read only after it has returned.
	if e := <-subErr; e != nil && err == nil {
		err = e
	}
	if e := pubErr.Load(); e != nil && err == nil {
		err = fmt.Errorf("publish: %w", *e)
	}
	if err != nil {
		return nil, err
	}
	return p.result("fleet", &res), nil
}

// submitAll publishes every job asynchronously, within the pacer's bound.
// It is what dispatcher.Client.SubmitBatch does, minus holding a future per
// job: publish errors reach the JetStream error handler.
func submitAll(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, cfg *BenchConfig, w *workload, p *pacer, prefix string) error {
	subjects := make([]string, len(w.sessions))
	for s, name := range w.sessions {
		subjects[s] = qcfg.SessionSubject(name)
	}
	anySubject := qcfg.AnySubject()
	job := &queue.Job{Command: cfg.Command, Payload: w.payload}
	for i := range w.n {
		if err := p.acquire(ctx, i); err != nil {
			return nil // the wait reports it
		}
		job.ID = prefix + strconv.Itoa(i)
		data, err := queue.EncodeJob(job)
		if err != nil {
			return err
		}
		subject := anySubject
		if s := w.sessionOf(i); s >= 0 {
			subject = subjects[s]
		}
		msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
		if _, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(job.ID), jetstream.WithStallWait(time.Minute)); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("submit %s: %w", job.ID, err)
		}
	}
	return nil
}

// waitOwned waits until the agents hold every partition between them.
func waitOwned(ctx context.Context, agents []*agent.Agent, partitions int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		total := 0
		for _, a := range agents {
			total += len(a.Partitions())
		}
		if total == partitions {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agents own %d of %d partitions after 30s", total, partitions)
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// deleteTopology removes what the bench created on an external server.
func deleteTopology(ctx context.Context, t *queue.Topology) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, s := range []string{t.Config.JobsStream(), t.Config.ResultsStream(), t.Config.DLQStream()} {
		_ = t.JS.DeleteStream(ctx, s)
	}
	for _, b := range []string{t.Config.AgentsBucket(), t.Config.LeasesBucket(), t.Config.PoisonBucket()} {
		_ = t.JS.DeleteKeyValue(ctx, b)
	}
}

// runStartup times an eager pool start of StartupWorkers workers that each
// sleep StartupDelay before they run WorkerCmd, all allowed to start at
// once; and, for reference, the same start of one worker alone.
func runStartup(ctx context.Context, cfg *BenchConfig) (*StartupRun, error) {
	one, err := timePoolStart(ctx, cfg, 1)
	if err != nil {
		return nil, err
	}
	all := one
	if cfg.StartupWorkers > 1 {
		if all, err = timePoolStart(ctx, cfg, cfg.StartupWorkers); err != nil {
			return nil, err
		}
	}
	return &StartupRun{Workers: cfg.StartupWorkers, Delay: cfg.StartupDelay, Ready: all, ReadyOne: one}, nil
}

func timePoolStart(ctx context.Context, cfg *BenchConfig, n int) (time.Duration, error) {
	delay := strconv.FormatFloat(cfg.StartupDelay.Seconds(), 'f', -1, 64)
	// sh and sleep(1) delay any worker program without changing it; exec
	// keeps the worker's pid, pipes and process group.
	argv := append([]string{"sh", "-c", `sleep "$0" && exec "$@"`, delay}, cfg.WorkerCmd...)
	p, err := pool.New(pool.Config{
		Name: "startup", Size: n, StartConcurrency: n,
		Worker: worker.Config{Command: argv, StartupTimeout: cfg.StartupDelay + 30*time.Second},
		Logger: cfg.Logger, HealthInterval: -1,
	})
	if err != nil {
		return 0, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = p.Stop(sctx)
	}()
	sctx, cancel := context.WithTimeout(ctx, cfg.StartupDelay+time.Minute)
	defer cancel()
	t0 := time.Now()
	if err := p.Start(sctx); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// machine describes this host for the report.
func machine(ctx context.Context, workerCmd []string) Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				m.Model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if len(workerCmd) > 0 && strings.HasPrefix(filepath.Base(workerCmd[0]), "python") {
		m.Python = pythonVersion(ctx, workerCmd[0])
	}
	return m
}

func pythonVersion(ctx context.Context, py string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, py, "--version").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// WriteTable prints the report: what ran where, then one row per
// measurement and the fleet/floor ratio.
func (r *BenchReport) WriteTable(out io.Writer) {
	shape := "anonymous jobs"
	if r.Sessions > 0 {
		shape = fmt.Sprintf("%d sessions", r.Sessions)
	}
	submission := "asynchronous, all at once"
	if r.Inflight > 0 {
		submission = fmt.Sprintf("closed loop, %d in flight", r.Inflight)
	}
	fmt.Fprintf(out, "\nprocfleet bench: %d agent(s) x %d workers, %d jobs of %d bytes, %s, submission %s\n",
		r.Agents, r.Workers, r.Jobs, r.PayloadSize, shape, submission)
	fmt.Fprintf(out, "  worker:  %s\n", strings.Join(r.WorkerCmd, " "))
	capacity := "agent default (2 x workers)"
	if r.Capacity > 0 {
		capacity = strconv.Itoa(r.Capacity)
	}
	fmt.Fprintf(out, "  NATS:    %s; agents in this process, capacity %s\n", r.NATS, capacity)
	mach := fmt.Sprintf("%s/%s, %d CPUs", r.Machine.OS, r.Machine.Arch, r.Machine.CPUs)
	if r.Machine.Model != "" {
		mach += ", " + r.Machine.Model
	}
	mach += ", " + r.Machine.Go
	if r.Machine.Python != "" {
		mach += ", " + r.Machine.Python
	}
	fmt.Fprintf(out, "  machine: %s\n\n", mach)

	// Names are padded by hand: the numbers are right-aligned, the names
	// read better left-aligned.
	const nameW = 14
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  %-*s\tjobs/s\tp50\tp90\tp99\tmax\tCPU s/1k jobs: this process\tworkers\tpeak RSS\t\n", nameW, "")
	for _, run := range []*BenchRun{r.Floor, r.Fleet} {
		if run == nil {
			continue
		}
		self, workers := run.CPUPer1k()
		fmt.Fprintf(tw, "  %-*s\t%.0f\t%s\t%s\t%s\t%s\t%.3f\t%.3f\t%.1f MB\t\n", nameW, run.Name, run.Throughput,
			fmtDur(run.Latency.P50), fmtDur(run.Latency.P90), fmtDur(run.Latency.P99), fmtDur(run.Latency.Max),
			self, workers, float64(run.PeakRSS)/(1<<20))
	}
	if r.Ratio > 0 {
		fmt.Fprintf(tw, "  %-*s\t%.2f\t\t\t\t\t\t\t\t\n", nameW, "fleet/floor", r.Ratio)
	}
	_ = tw.Flush()
	for _, run := range []*BenchRun{r.Floor, r.Fleet} {
		if run != nil && run.Failed > 0 {
			fmt.Fprintf(out, "  %s: %d jobs failed\n", run.Name, run.Failed)
		}
	}
	server := "the embedded NATS server"
	if !r.embedded() {
		server = "not the NATS server, which runs elsewhere"
	}
	fmt.Fprintln(out, "\n  latency: submission to result. CPU: this process is getrusage(SELF): the driver")
	fmt.Fprintf(out, "  loop; for the fleet the agents, the bench client and %s.\n", server)
	fmt.Fprintln(out, "  workers: their /proc/<pid>/stat time during the run. RSS: this process (same")
	fmt.Fprintln(out, "  scope), workers not included.")
	if s := r.Startup; s != nil {
		fmt.Fprintf(out, "\n  start-up: %d workers that each take %s to start were all ready in %s (one alone: %s)\n",
			s.Workers, s.Delay, s.Ready.Round(time.Millisecond), s.ReadyOne.Round(time.Millisecond))
	}
}

// embedded reports whether the fleet ran on an embedded server.
func (r *BenchReport) embedded() bool { return r.NATS == natsEmbedded }

const natsEmbedded = "embedded (in this process)"

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
}
