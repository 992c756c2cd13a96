package bench

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/worker"
)

// runFloor drives Agents*Workers worker processes directly: one goroutine
// per worker, each running worker.Call in a loop. Session jobs go to a
// fixed worker per session, the way the fleet keeps affinity; anonymous
// jobs to whichever worker is free.
func runFloor(ctx context.Context, cfg *Config, w *workload) (*Measurement, error) {
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

	m := startMeter(pids, 0, nil)
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
	var run Measurement
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
