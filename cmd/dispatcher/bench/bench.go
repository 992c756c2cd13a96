// Package bench is `dispatcher bench`: it measures the floor (the same
// worker program driven by a plain Go loop over pipes), the fleet (jobs
// through NATS JetStream and in-process agents) and, optionally, an eager
// pool start, and prints one table. Speed targets live in its output, never
// in a unit test.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// ErrInvalidConfig is wrapped by every error Run returns for a bad Config.
var ErrInvalidConfig = errors.New("bench: invalid config")

// Defaults of Config, which the command's flags show too.
const (
	DefaultAgents         = 1
	DefaultWorkers        = 4
	DefaultJobs           = 20000
	DefaultPayloadSize    = 100
	DefaultCommand        = "echo"
	DefaultStartupDelay   = time.Second
	DefaultStartupWorkers = 8 // the command line's; the library's is 0 (off)
)

// Config configures Run. The zero value runs the README's
// benchmark: an embedded server, one agent with four echo workers, 20,000
// anonymous jobs of 100 bytes submitted all at once.
type Config struct {
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
	// NATSFloor adds the NATS floor measurement: the fleet's run with a
	// plain pull loop in place of agents and workers (it stores each job's
	// echo result and acks the job), so that what NATS alone costs per job
	// in this pattern is measured beside what the fleet costs. Default
	// false.
	NATSFloor bool
	// NATSFloorBatch is how many jobs each pull of the NATS floor asks
	// for: the batch size, which decides most of the server's cost per
	// job. Default DefaultNATSFloorBatch (32).
	NATSFloorBatch int
	// NATSFloorConsumers, when above 0, makes the NATS floor of a session
	// workload pull through this many consumers, each filtering its share
	// of the partitions (several filter subjects on one consumer: the
	// one-consumer-per-agent design, for that many agents), instead of the
	// partition consumers the fleet uses: what the server would cost per
	// job with that design. The partition consumers of the bench's own
	// server are deleted first, since a work-queue stream refuses
	// overlapping filters. Default 0 (the partition consumers).
	NATSFloorConsumers int
	// StartupWorkers, when above 0, adds a start-up measurement: a pool of
	// this many workers, each delayed by StartupDelay before it runs
	// WorkerCmd, started with StartConcurrency equal to its size. Default 0
	// (off); the command line's default is 8.
	StartupWorkers int
	// StartupDelay is the start-up measurement's per-worker delay. Default
	// 1s.
	StartupDelay time.Duration
	// ServerCPUs, when set, runs the NATS server as a process of its own
	// (ServerBin serve --embedded, in a fresh directory) pinned to these
	// CPUs, and pins this process (the floor, the bench client, in-process
	// agents and the workers) and agent processes to all the other CPUs.
	// Its CPU per job is then reported on its own line. Default none: an
	// embedded server in this process, nothing pinned. Not with NATSURL.
	ServerCPUs []int
	// ServerBin is the program whose `serve --embedded` is the server of
	// ServerCPUs. Default: ServerProgram.Find (next to this executable,
	// on PATH, or built from the checkout).
	ServerBin string
	// AgentProcess runs each agent as a cmd/agent process instead of in
	// this process, so that its CPU per job is its own line. Default false.
	AgentProcess bool
	// AgentBin is the agent program of AgentProcess. Default:
	// localfleet.AgentProgram.Find.
	AgentBin string
	// MemoryConsumers, ResultsStorage and ResultsMaxAge are the topology's
	// queue.Config fields of the same names: the storage choices whose cost
	// the README reports. Defaults: the topology's (file-stored consumers,
	// results on the fleet's storage for 24 hours). With ServerCPUs the
	// server process's `serve` gets them as flags.
	MemoryConsumers bool
	ResultsStorage  string
	ResultsMaxAge   time.Duration
	// Partitions is the topology's session partition count. Default 0:
	// queue.DefaultPartitions (64).
	Partitions int
	// StoreDir is the directory in which the NATS server the bench starts
	// (embedded or, with ServerCPUs, its own process) keeps its JetStream
	// store, in a temporary directory of its own: the filesystem under the
	// store is part of the server's cost per job (see the README). Default
	// "": the system's temporary directory. Unused with NATSURL.
	StoreDir string
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

// Report is what Run measured.
type Report struct {
	Agents      int          `json:"agents"`
	Workers     int          `json:"workers_per_agent"`
	Jobs        int          `json:"jobs"`
	Sessions    int          `json:"sessions"`
	PayloadSize int          `json:"payload_size"`
	Inflight    int          `json:"inflight"`
	Capacity    int          `json:"capacity,omitempty"`
	WorkerCmd   []string     `json:"worker_cmd"`
	NATS        string       `json:"nats"`
	Machine     Machine      `json:"machine"`
	Floor       *Measurement `json:"floor,omitempty"`
	Fleet       *Measurement `json:"fleet,omitempty"`
	NATSFloor   *Measurement `json:"nats_floor,omitempty"`
	// NATSFloorBatch is Config's, when the NATS floor ran.
	NATSFloorBatch int `json:"nats_floor_batch,omitempty"`
	// NATSFloorConsumers is Config's, when the NATS floor ran.
	NATSFloorConsumers int                 `json:"nats_floor_consumers,omitempty"`
	Ratio              float64             `json:"fleet_floor_ratio,omitempty"` // fleet throughput / floor throughput
	Startup            *StartupMeasurement `json:"startup,omitempty"`
	// ServerCPUs and AgentProcess are Config's: where the parts ran.
	ServerCPUs   []int `json:"server_cpus,omitempty"`
	AgentProcess bool  `json:"agent_process,omitempty"`
	// MemoryConsumers, ResultsStorage and ResultsMaxAge are Config's: the
	// topology's storage choices.
	MemoryConsumers bool          `json:"memory_consumers,omitempty"`
	ResultsStorage  string        `json:"results_storage,omitempty"`
	ResultsMaxAge   time.Duration `json:"results_max_age_ns,omitempty"`
	Partitions      int           `json:"partitions,omitempty"`
	StoreDir        string        `json:"store_dir,omitempty"`
	// LoadBefore and LoadAfter are /proc/loadavg's 1, 5 and 15 minute load
	// averages when the run began and ended: figures from a loaded machine
	// are noisy.
	LoadBefore string `json:"load_before,omitempty"`
	LoadAfter  string `json:"load_after,omitempty"`
}

// Measurement is one measured row of the table.
type Measurement struct {
	Name       string  `json:"name"`
	Jobs       int     `json:"jobs"`
	Failed     int     `json:"failed"`
	Throughput float64 `json:"jobs_per_sec"`
	// Elapsed runs from the first submission to the last result.
	Elapsed time.Duration `json:"elapsed_ns"`
	// Latency is submission to result, per job. With Inflight 0 it
	// includes the time a job waits behind the ones submitted before it.
	Latency localfleet.Percentiles `json:"latency_ns"`
	// CPUSelf is the user+system CPU time of this process during the run
	// (getrusage): the driver loop for the floor; for the fleet the
	// in-process agents, the bench client and, when embedded, the NATS
	// server.
	CPUSelf time.Duration `json:"cpu_self_ns"`
	// CPUWorkers is the user+system CPU time the worker processes spent
	// during the run (/proc/<pid>/stat), start-up excluded.
	CPUWorkers time.Duration `json:"cpu_workers_ns"`
	// CPUServer is the NATS server process's user+system CPU time during
	// the run, when it runs apart (ServerCPUs); CPUAgents the agent
	// processes' (AgentProcess). Zero when not measured apart.
	CPUServer time.Duration `json:"cpu_server_ns,omitempty"`
	CPUAgents time.Duration `json:"cpu_agents_ns,omitempty"`
	// SyscallsServer and SyscallsAgents are the read and write system
	// calls (socket, pipe and file) of the same processes during the run.
	SyscallsServer int64 `json:"syscalls_server,omitempty"`
	SyscallsAgents int64 `json:"syscalls_agents,omitempty"`
	// ServerAffinity and AgentAffinity are the Cpus_allowed_list of the
	// NATS server and the (first) agent process, read during the run;
	// empty when they did not run apart.
	ServerAffinity string `json:"server_affinity,omitempty"`
	AgentAffinity  string `json:"agent_affinity,omitempty"`
	// PeakRSS is the largest resident set size of this process sampled
	// during the run (workers not included).
	PeakRSS int64 `json:"peak_rss_bytes"`
	// AgentPeakRSS is the largest sum of the agent processes' resident
	// set sizes sampled during the run (AgentProcess only).
	AgentPeakRSS int64 `json:"agent_peak_rss_bytes,omitempty"`
}

// CPUPer1k returns this process's and the workers' CPU seconds per 1,000
// jobs.
func (r *Measurement) CPUPer1k() (self, workers float64) {
	if r.Jobs == 0 {
		return 0, 0
	}
	k := float64(r.Jobs) / 1000
	return r.CPUSelf.Seconds() / k, r.CPUWorkers.Seconds() / k
}

// StartupMeasurement is the start-up measurement: how long pool.Start took until
// every worker was ready.
type StartupMeasurement struct {
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

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Agents == 0 {
		c.Agents = DefaultAgents
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.Jobs == 0 {
		c.Jobs = DefaultJobs
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = DefaultPayloadSize
	}
	if c.Command == "" {
		c.Command = DefaultCommand
	}
	if c.NATSFloorBatch == 0 {
		c.NATSFloorBatch = DefaultNATSFloorBatch
	}
	if c.StartupDelay == 0 {
		c.StartupDelay = DefaultStartupDelay
	}
	if c.Timeout == 0 {
		c.Timeout = 2*time.Minute + time.Duration(c.Jobs)*10*time.Millisecond
	}
	c.Out, c.Progress, c.Logger = localfleet.OutputDefaults(c.Out, c.Progress, os.Stderr, c.Logger)
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	switch {
	case c.Agents < 0:
		return fmt.Errorf("%w: Agents cannot be negative", ErrInvalidConfig)
	case c.Workers < 0:
		return fmt.Errorf("%w: Workers cannot be negative", ErrInvalidConfig)
	case c.Jobs < 0:
		return fmt.Errorf("%w: Jobs cannot be negative", ErrInvalidConfig)
	case c.Sessions < 0:
		return fmt.Errorf("%w: Sessions cannot be negative", ErrInvalidConfig)
	case c.PayloadSize < 8:
		return fmt.Errorf("%w: PayloadSize must be at least 8 bytes, got %d", ErrInvalidConfig, c.PayloadSize)
	case c.Inflight < 0:
		return fmt.Errorf("%w: Inflight cannot be negative", ErrInvalidConfig)
	case c.Capacity < 0:
		return fmt.Errorf("%w: Capacity cannot be negative", ErrInvalidConfig)
	case c.NATSFloorBatch < 0:
		return fmt.Errorf("%w: NATSFloorBatch cannot be negative", ErrInvalidConfig)
	case c.NATSFloorConsumers < 0:
		return fmt.Errorf("%w: NATSFloorConsumers cannot be negative", ErrInvalidConfig)
	case c.NATSFloorConsumers > 0 && (!c.NATSFloor || c.Sessions == 0):
		return fmt.Errorf("%w: NATSFloorConsumers needs NATSFloor and Sessions", ErrInvalidConfig)
	case c.StartupWorkers < 0:
		return fmt.Errorf("%w: StartupWorkers cannot be negative", ErrInvalidConfig)
	case c.NATSURL != "" && len(c.ServerCPUs) > 0:
		return fmt.Errorf("%w: ServerCPUs starts a server of its own, NATSURL names one: set one of them", ErrInvalidConfig)
	case c.NATSURL != "" && c.StoreDir != "":
		return fmt.Errorf("%w: StoreDir is for a server the bench starts, NATSURL names one: set one of them", ErrInvalidConfig)
	case c.StartupDelay < 0:
		return fmt.Errorf("%w: StartupDelay cannot be negative", ErrInvalidConfig)
	case c.ResultsStorage != "" && c.ResultsStorage != "file" && c.ResultsStorage != "memory":
		return fmt.Errorf("%w: ResultsStorage must be \"file\" or \"memory\", got %q", ErrInvalidConfig, c.ResultsStorage)
	case c.Partitions < 0 || c.Partitions > queue.MaxPartitions:
		return fmt.Errorf("%w: Partitions must be between 0 (the default) and %d, got %d", ErrInvalidConfig, queue.MaxPartitions, c.Partitions)
	case c.ResultsMaxAge < 0:
		return fmt.Errorf("%w: ResultsMaxAge cannot be negative", ErrInvalidConfig)
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

// Run measures the floor (the same worker program and number of
// processes driven by a plain Go loop over pipes: worker.Start and
// worker.Call, one goroutine per worker) and then the fleet (jobs through
// NATS JetStream, in-process agents and their pools), and writes one table
// for both. With StartupWorkers set it also times a pool start.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(cfg.WorkerCmd) == 0 {
		p, err := localfleet.FindExample("echo_worker.py")
		if err != nil {
			return nil, err
		}
		cfg.WorkerCmd = []string{realPython(), p}
	}
	rep := &Report{
		Agents: cfg.Agents, Workers: cfg.Workers, Jobs: cfg.Jobs, Sessions: cfg.Sessions,
		PayloadSize: cfg.PayloadSize, Inflight: cfg.Inflight, Capacity: cfg.Capacity, WorkerCmd: cfg.WorkerCmd,
		NATS: natsEmbedded, Machine: machine(ctx, cfg.WorkerCmd),
	}
	if cfg.NATSURL != "" {
		rep.NATS = cfg.NATSURL
	}
	rep.ServerCPUs, rep.AgentProcess, rep.LoadBefore = cfg.ServerCPUs, cfg.AgentProcess, loadAvg()
	rep.MemoryConsumers, rep.ResultsStorage, rep.ResultsMaxAge = cfg.MemoryConsumers, cfg.ResultsStorage, cfg.ResultsMaxAge
	rep.StoreDir = cfg.StoreDir
	rep.Partitions = cfg.Partitions
	if len(cfg.ServerCPUs) > 0 {
		rest, err := otherCPUs(cfg.ServerCPUs)
		if err != nil {
			return nil, err
		}
		restore, err := pinSelf(rest)
		if err != nil {
			return nil, fmt.Errorf("bench: pin to CPUs %v: %w", rest, err)
		}
		defer restore()
		rep.NATS = fmt.Sprintf("own process on CPU(s) %s, the rest on %s", cpuList(cfg.ServerCPUs), cpuList(rest))
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
		run, err := runFleet(ctx, &cfg, w, false)
		if err != nil {
			return nil, fmt.Errorf("bench: fleet: %w", err)
		}
		rep.Fleet = run
	}
	if cfg.NATSFloor {
		fmt.Fprintln(cfg.Progress, "NATS floor: the same jobs answered by a plain pull loop, no agent, no worker")
		run, err := runFleet(ctx, &cfg, w, true)
		if err != nil {
			return nil, fmt.Errorf("bench: NATS floor: %w", err)
		}
		rep.NATSFloor, rep.NATSFloorBatch, rep.NATSFloorConsumers = run, cfg.NATSFloorBatch, cfg.NATSFloorConsumers
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
	rep.LoadAfter = loadAvg()
	rep.WriteTable(cfg.Out)
	return rep, nil
}

// otherCPUs returns the CPUs of this machine not in server, or an error
// naming what is wrong with server.
func otherCPUs(server []int) ([]int, error) {
	n := runtime.NumCPU()
	var rest []int
	for c := range n {
		if !slices.Contains(server, c) {
			rest = append(rest, c)
		}
	}
	for _, c := range server {
		if c < 0 || c >= n {
			return nil, fmt.Errorf("%w: ServerCPUs: CPU %d does not exist (this machine has %d)", ErrInvalidConfig, c, n)
		}
	}
	if len(rest) == 0 {
		return nil, fmt.Errorf("%w: ServerCPUs %v leave no CPU for the fleet", ErrInvalidConfig, server)
	}
	return rest, nil
}

func cpuList(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}
