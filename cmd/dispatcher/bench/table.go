package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

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
func (r *Report) WriteTable(out io.Writer) {
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
	capacity := "agent default (adaptive: 2 x workers for long jobs, up to max(2 x workers, 32) for short ones)"
	if r.Capacity > 0 {
		capacity = strconv.Itoa(r.Capacity)
	}
	where := "agents in this process"
	if r.AgentProcess {
		where = "agents as cmd/agent processes"
	}
	fmt.Fprintf(out, "  NATS:    %s; %s, capacity %s\n", r.NATS, where, capacity)
	if st := r.storage(); st != "" {
		fmt.Fprintf(out, "  storage: %s\n", st)
	}
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
	for _, run := range []*Measurement{r.Floor, r.Fleet, r.NATSFloor} {
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
	for _, run := range []*Measurement{r.Floor, r.Fleet, r.NATSFloor} {
		if run != nil && run.Failed > 0 {
			fmt.Fprintf(out, "  %s: %d jobs failed\n", run.Name, run.Failed)
		}
	}
	r.writeParts(out)
	server := "the embedded NATS server"
	if len(r.ServerCPUs) > 0 {
		server = "not the NATS server, which runs in its own process"
	} else if !r.embedded() {
		server = "not the NATS server, which runs elsewhere"
	}
	agents := "the agents, "
	if r.AgentProcess {
		agents = ""
	}
	fmt.Fprintln(out, "\n  latency: submission to result. CPU: this process is getrusage(SELF): the driver")
	fmt.Fprintf(out, "  loop; for the fleet %sthe bench client and %s.\n", agents, server)
	fmt.Fprintln(out, "  Processes apart (NATS server, agents): their /proc/<pid>/stat time during the run.")
	fmt.Fprintln(out, "  workers: their /proc/<pid>/stat time during the run. RSS: this process (same")
	fmt.Fprintln(out, "  scope), workers not included.")
	if s := r.Startup; s != nil {
		fmt.Fprintf(out, "\n  start-up: %d workers that each take %s to start were all ready in %s (one alone: %s)\n",
			s.Workers, s.Delay, s.Ready.Round(time.Millisecond), s.ReadyOne.Round(time.Millisecond))
	}
}

// writeParts prints the fleet's CPU per job, one line per part, and the
// load average around the run.
func (r *Report) writeParts(out io.Writer) {
	if r.LoadBefore != "" {
		fmt.Fprintf(out, "\n  load average (1, 5, 15 min): %s before, %s after\n", r.LoadBefore, r.LoadAfter)
	}
	if r.Floor != nil && r.Floor.Jobs > 0 {
		fmt.Fprintf(out, "  floor CPU per job: driver %s, workers %s\n", perJob(r.Floor.CPUSelf, r.Floor.Jobs), perJob(r.Floor.CPUWorkers, r.Floor.Jobs))
	}
	if n := r.NATSFloor; n != nil && n.Jobs > 0 {
		server := "in this process"
		switch {
		case len(r.ServerCPUs) > 0:
			server = perJob(n.CPUServer, n.Jobs) + ", " + callsPerJob(n.SyscallsServer, n.Jobs)
		case !r.embedded():
			server = "elsewhere, not measured"
		}
		self := "the pull loop and the bench client"
		if r.embedded() {
			self += " and the NATS server"
		}
		consumers := ""
		if k := r.NATSFloorConsumers; k > 0 {
			consumers = fmt.Sprintf(", %d consumer(s) with several filters each", k)
		}
		fmt.Fprintf(out, "  NATS floor CPU per job (pulls of up to %d%s): NATS server %s; %s %s\n", r.NATSFloorBatch, consumers, server, self, perJob(n.CPUSelf, n.Jobs))
	}
	f := r.Fleet
	if f == nil || f.Jobs == 0 {
		return
	}
	fmt.Fprintln(out, "  fleet CPU per job:")
	var inSelf []string
	if r.AgentProcess {
		fmt.Fprintf(out, "    agent process:  %s, %s (CPUs %s; peak RSS %.1f MB)\n", perJob(f.CPUAgents, f.Jobs), callsPerJob(f.SyscallsAgents, f.Jobs), f.AgentAffinity, float64(f.AgentPeakRSS)/(1<<20))
	} else {
		fmt.Fprintln(out, "    agent process:  in the bench process, not apart (--agent-process)")
		inSelf = append(inSelf, "agents")
	}
	switch {
	case len(r.ServerCPUs) > 0:
		fmt.Fprintf(out, "    NATS server:    %s, %s (its own process, CPUs %s)\n", perJob(f.CPUServer, f.Jobs), callsPerJob(f.SyscallsServer, f.Jobs), f.ServerAffinity)
	case r.embedded():
		fmt.Fprintln(out, "    NATS server:    in the bench process, not apart (--server-cpus)")
		inSelf = append(inSelf, "NATS server")
	default:
		fmt.Fprintln(out, "    NATS server:    elsewhere, not measured")
	}
	client := "    bench client:   " + perJob(f.CPUSelf, f.Jobs)
	if len(inSelf) > 0 {
		client += " (with the " + strings.Join(inSelf, " and the ") + ")"
	}
	fmt.Fprintln(out, client)
	fmt.Fprintf(out, "    workers:        %s\n", perJob(f.CPUWorkers, f.Jobs))
}

// callsPerJob formats read and write system calls per job.
func callsPerJob(n int64, jobs int) string {
	return fmt.Sprintf("%.2f reads+writes", float64(n)/float64(jobs))
}

func perJob(d time.Duration, jobs int) string {
	return fmt.Sprintf("%.0f µs", float64(d.Microseconds())/float64(jobs))
}

// embedded reports whether the fleet ran on an embedded server.
func (r *Report) embedded() bool { return r.NATS == natsEmbedded }

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

// storage names the topology's storage choices that differ from the
// defaults, "" if none do.
func (r *Report) storage() string {
	var parts []string
	if r.MemoryConsumers {
		parts = append(parts, "memory-stored job consumers")
	}
	if r.ResultsStorage != "" {
		parts = append(parts, "results on "+r.ResultsStorage+" storage")
	}
	if r.Partitions > 0 {
		parts = append(parts, strconv.Itoa(r.Partitions)+" partitions")
	}
	if r.ResultsMaxAge > 0 {
		parts = append(parts, "results kept "+r.ResultsMaxAge.String())
	}
	if r.StoreDir != "" {
		parts = append(parts, "NATS store in "+r.StoreDir)
	}
	return strings.Join(parts, ", ")
}
