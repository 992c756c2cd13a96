package bench_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/cmd/dispatcher/bench"
)

// TestBenchSmoke runs the benchmark with a handful of jobs so that it cannot
// rot. It asserts only that it runs and prints its table: speed targets
// live in the benchmark's output, never in a unit test.
func TestBenchSmoke(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  bench.Config
	}{
		{"anonymous", bench.Config{Jobs: 30, Workers: 2, StartupWorkers: 2, StartupDelay: 10 * time.Millisecond, NATSFloor: true}},
		{"sessions closed loop", bench.Config{Jobs: 12, Workers: 1, Sessions: 3, Inflight: 2, PayloadSize: 40}},
		// Every job must come back: the three consumers' filters must
		// cover every partition between them.
		{"sessions, NATS floor over filtered consumers", bench.Config{Jobs: 40, Workers: 1, Sessions: 20, Partitions: 8, NATSFloor: true, NATSFloorConsumers: 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var out bytes.Buffer
			cfg := tc.cfg
			cfg.Out, cfg.Progress = &out, io.Discard
			rep, err := bench.Run(ctx, cfg)
			if err != nil {
				t.Fatalf("bench: %v\n%s", err, out.String())
			}
			if rep.Floor == nil || rep.Fleet == nil || rep.Floor.Jobs != cfg.Jobs || rep.Fleet.Jobs != cfg.Jobs {
				t.Fatalf("report %+v", rep)
			}
			if rep.Floor.Failed != 0 || rep.Fleet.Failed != 0 {
				t.Fatalf("failed jobs: floor %d, fleet %d", rep.Floor.Failed, rep.Fleet.Failed)
			}
			want := []string{"floor (pipes)", "fleet", "fleet/floor", "jobs/s", "p99", "peak RSS"}
			if cfg.StartupWorkers > 0 {
				want = append(want, "start-up: 2 workers")
			}
			if cfg.NATSFloor {
				if n := rep.NATSFloor; n == nil || n.Jobs != cfg.Jobs || n.Failed != 0 {
					t.Fatalf("NATS floor %+v", n)
				}
				consumers := ""
				if cfg.NATSFloorConsumers > 0 {
					consumers = ", 3 consumer(s) with several filters each"
				}
				want = append(want, "NATS floor ", "NATS floor CPU per job (pulls of up to 32"+consumers+"): NATS server in this process")
			}
			for _, w := range want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("table lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestBenchProcessesApart runs the own-cores setup with a handful of jobs:
// the NATS server in a process of its own pinned to CPU 0 (the bench and
// its workers on the others), and the agent as a cmd/agent process. It
// pins that each part's CPU per job is measured apart and printed on its
// own line, and that the server really ran pinned.
func TestBenchProcessesApart(t *testing.T) {
	t.Parallel()
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to pin the server apart")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	// Enough jobs for the agent's CPU to pass one clock tick (10ms).
	cfg := bench.Config{Jobs: 400, Workers: 2, Sessions: 4, ServerCPUs: []int{0}, AgentProcess: true, NATSFloor: true}
	cfg.Out, cfg.Progress = &out, io.Discard
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if rep.Fleet == nil || rep.Fleet.Jobs != cfg.Jobs || rep.Fleet.Failed != 0 || rep.Floor == nil {
		t.Fatalf("report %+v", rep)
	}
	// Both processes did work for the jobs: their CPU was read apart.
	if rep.Fleet.CPUServer <= 0 || rep.Fleet.CPUAgents <= 0 || rep.Fleet.AgentPeakRSS <= 0 {
		t.Errorf("apart: server CPU %v, agents CPU %v, agents RSS %d; want all above 0", rep.Fleet.CPUServer, rep.Fleet.CPUAgents, rep.Fleet.AgentPeakRSS)
	}
	rest := "1"
	if n := runtime.NumCPU(); n > 2 {
		rest = "1-" + strconv.Itoa(n-1)
	}
	if rep.Fleet.ServerAffinity != "0" || rep.Fleet.AgentAffinity != rest {
		t.Errorf("affinity: server %q, agent %q; want \"0\" and %q", rep.Fleet.ServerAffinity, rep.Fleet.AgentAffinity, rest)
	}
	// The NATS floor answered every job of every partition through the
	// same kind of server process, measured apart too.
	if n := rep.NATSFloor; n == nil || n.Jobs != cfg.Jobs || n.Failed != 0 || n.CPUServer <= 0 || n.ServerAffinity != "0" {
		t.Errorf("NATS floor %+v; want every job, none failed, the server's CPU read apart on CPU 0", n)
	}
	for _, w := range []string{"agent process:  ", "NATS server:    ", "bench client:   ", "workers:        ",
		"own process on CPU(s) 0", "load average", "NATS floor CPU per job (pulls of up to 32): NATS server "} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
	for _, w := range []string{"not apart"} {
		if strings.Contains(out.String(), w) {
			t.Errorf("output has %q although every part ran apart:\n%s", w, out.String())
		}
	}
}

// TestBenchConfigErrors: a bad Config is refused before anything starts,
// with an error that wraps ErrInvalidConfig and names the field.
func TestBenchConfigErrors(t *testing.T) {
	t.Parallel()
	for field, cfg := range map[string]bench.Config{
		"PayloadSize":        {PayloadSize: 4},
		"Inflight":           {Inflight: -1},
		"Agents":             {Agents: -1},
		"ServerCPUs":         {ServerCPUs: []int{0}, NATSURL: "nats://127.0.0.1:1"},
		"ResultsStorage":     {ResultsStorage: "disk"},
		"ResultsMaxAge":      {ResultsMaxAge: -time.Second},
		"Partitions":         {Partitions: 5000},
		"StoreDir":           {StoreDir: "/tmp", NATSURL: "nats://127.0.0.1:1"},
		"NATSFloorConsumers": {NATSFloor: true, NATSFloorConsumers: 2},
	} {
		_, err := bench.Run(context.Background(), cfg)
		if !errors.Is(err, bench.ErrInvalidConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming the field", field, err)
		}
	}
}

// TestBenchStorageChoices: the topology choices reach the server process's
// `serve` as flags. The bench checks the topology serve made against what
// it was asked (queue.Ensure refuses a results stream stored otherwise or
// another partition count; the bench itself, consumers stored otherwise),
// so a choice that did not reach the server fails the run. Not parallel: it
// pins this process, as TestBenchProcessesApart does.
func TestBenchStorageChoices(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs 2 CPUs to pin the server apart")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cfg := bench.Config{Jobs: 200, Workers: 2, Sessions: 4, ServerCPUs: []int{0}, NoFloor: true,
		MemoryConsumers: true, ResultsStorage: "memory", ResultsMaxAge: time.Minute, Partitions: 8,
		StoreDir: t.TempDir()}
	cfg.Out, cfg.Progress = &out, io.Discard
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out.String())
	}
	if rep.Fleet == nil || rep.Fleet.Jobs != cfg.Jobs || rep.Fleet.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
	want := "storage: memory-stored job consumers, results on memory storage, 8 partitions, results kept 1m0s, NATS store in " + cfg.StoreDir
	if !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
	if left, err := os.ReadDir(cfg.StoreDir); err != nil || len(left) != 0 {
		t.Errorf("store directory after the run: %v %v, want it emptied", left, err)
	}
}

// TestBenchStoreDir: the server the bench starts keeps its store in
// StoreDir, embedded or in a process of its own; a StoreDir that cannot
// hold it fails the run before any job, naming the directory.
func TestBenchStoreDir(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-dir")
	for _, apart := range []bool{false, true} {
		if apart && runtime.NumCPU() < 2 {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cfg := bench.Config{Jobs: 10, Workers: 1, NoFloor: true, StoreDir: missing}
		if apart {
			cfg.ServerCPUs = []int{0}
		}
		cfg.Out, cfg.Progress = io.Discard, io.Discard
		_, err := bench.Run(ctx, cfg)
		cancel()
		if err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("server apart %v: got %v, want an error naming %s", apart, err, missing)
		}
	}
}
