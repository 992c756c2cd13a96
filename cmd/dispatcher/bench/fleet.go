package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// runFleet runs the workload through NATS and in-process agents or, with
// natsOnly, through NATS and the NATS floor's loop (natsfloor.go) instead of
// agents.
func runFleet(ctx context.Context, cfg *Config, w *workload, natsOnly bool) (*Measurement, error) {
	// Programs found below are built into this run's directory, which
	// goes with it: the next run finds its own.
	c := *cfg
	cfg = &c
	qcfg := queue.Config{MemoryConsumers: cfg.MemoryConsumers, ResultsStorage: cfg.ResultsStorage, ResultsMaxAge: cfg.ResultsMaxAge, Partitions: cfg.Partitions}
	url := cfg.NATSURL
	var server *child
	if len(cfg.ServerCPUs) > 0 || cfg.AgentProcess {
		dir, err := os.MkdirTemp("", "procfleet-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if cfg.AgentProcess && !natsOnly && cfg.AgentBin == "" {
			if cfg.AgentBin, err = localfleet.AgentProgram.Find(ctx, dir); err != nil {
				return nil, err
			}
		}
		if len(cfg.ServerCPUs) > 0 {
			if cfg.ServerBin == "" {
				if cfg.ServerBin, err = ServerProgram.Find(ctx, dir); err != nil {
					return nil, err
				}
			}
			// The store apart from dir, where programs may be built: a
			// StoreDir on tmpfs may not allow running them.
			store, err := os.MkdirTemp(cfg.StoreDir, "procfleet-bench-nats-")
			if err != nil {
				return nil, err
			}
			defer os.RemoveAll(store)
			if server, url, err = startServerProcess(ctx, cfg.ServerBin, store, cfg.ServerCPUs, serveFlags(qcfg)); err != nil {
				return nil, err
			}
			// Stopped after the fleet (deferred first, runs last).
			defer server.stop(30 * time.Second)
		}
	}
	if cfg.NATSURL != "" {
		// A prefix of its own, so that the bench neither sees nor
		// disturbs a fleet on the same server.
		qcfg.Prefix = "bench" + strings.ToLower(nuid.Next()[:8])
	}
	f, err := localfleet.Start(ctx, localfleet.Config{
		URL: url, TempPattern: "procfleet-bench-", TempDir: cfg.StoreDir, Name: "procfleet-bench",
		Queue: qcfg, Logger: cfg.Logger, BalanceTimeout: -1,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		sctx := context.WithoutCancel(ctx)
		f.StopAgents(sctx)
		if cfg.NATSURL != "" {
			deleteTopology(sctx, f.Client.Topology())
		}
		f.Stop(sctx)
	}()
	qcfg, nc := f.Queue(), f.NC
	// An existing jobs stream keeps its consumers' storage whatever is
	// asked (queue.Config.MemoryConsumers): measure only what was asked.
	if got := f.Client.Topology().Config.MemoryConsumers; got != cfg.MemoryConsumers {
		return nil, fmt.Errorf("bench: memory-stored consumers asked %v, the topology has %v", cfg.MemoryConsumers, got)
	}
	var pubErr atomic.Pointer[error]
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
			pubErr.CompareAndSwap(nil, &err)
		}))
	if err != nil {
		return nil, err
	}

	fmt.Fprintf(cfg.Progress, "fleet: NATS %s, %d agent(s) x %d workers\n", f.URL, cfg.Agents, cfg.Workers)
	var agentProcs []*child
	agentsHere := cfg.Agents * btoi(!cfg.AgentProcess && !natsOnly)
	if cfg.AgentProcess && !natsOnly {
		if agentProcs, err = startAgentProcesses(ctx, cfg, f.URL, f.Client.Topology()); err != nil {
			return nil, err
		}
		// Stopped before the fleet's connection and server go.
		defer stopChildren(agentProcs)
	}
	for i := range agentsHere {
		acfg := agent.Config{Name: fmt.Sprintf("bench-agent-%d", i+1), Logger: cfg.Logger}
		acfg.Pool.Size = cfg.Workers
		acfg.Capacity = cfg.Capacity
		acfg.Pool.Worker = worker.Config{Command: cfg.WorkerCmd, StartupTimeout: 30 * time.Second}
		if _, err := f.StartAgent(ctx, acfg); err != nil {
			return nil, err
		}
	}
	if agentsHere > 0 {
		bctx, stopWait := context.WithTimeout(ctx, localfleet.DefaultBalanceTimeout)
		err = localfleet.WaitBalanced(bctx, f.Agents(), qcfg.Partitions)
		stopWait()
		if err != nil {
			return nil, err
		}
	}
	agents := f.Agents()
	var loop *natsLoop
	if natsOnly {
		if loop, err = startNATSLoop(ctx, f.URL, qcfg, cfg.Sessions > 0, cfg.NATSFloorConsumers, cfg.NATSFloorBatch); err != nil {
			return nil, err
		}
		defer func() { _ = loop.stop() }()
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
	if cfg.CPUProfile != nil && !natsOnly {
		if err := pprof.StartCPUProfile(cfg.CPUProfile); err != nil {
			return nil, fmt.Errorf("cpu profile: %w", err)
		}
		prof = true
	}
	var agentPIDs []int
	for _, c := range agentProcs {
		agentPIDs = append(agentPIDs, c.pid())
		pids = append(pids, childPIDs(c.pid())...)
	}
	serverPID := 0
	if server != nil {
		serverPID = server.pid()
	}
	m := startMeter(pids, serverPID, agentPIDs)
	p.begin()
	subErr := make(chan error, 1)
	go func() {
		subErr <- submitAll(ctx, js, qcfg, cfg, w, p, prefix)
	}()
	err = p.wait(ctx, cfg.Progress, "fleet")
	var res Measurement
	m.end(&res)
	if server != nil {
		res.ServerAffinity = cpusAllowed(server.pid())
	}
	if len(agentProcs) > 0 {
		res.AgentAffinity = cpusAllowed(agentProcs[0].pid())
	}
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
	name := "fleet"
	if loop != nil {
		name = natsFloorName
		if e := loop.stop(); e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return nil, err
	}
	return p.result(name, &res), nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// submitAll publishes every job asynchronously, within the pacer's bound.
// It is what dispatcher.Client.SubmitBatch does, minus holding a future per
// job: publish errors reach the JetStream error handler.
func submitAll(ctx context.Context, js jetstream.JetStream, qcfg queue.Config, cfg *Config, w *workload, p *pacer, prefix string) error {
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
