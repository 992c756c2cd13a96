package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/internal/localfleet"
)

// workload is the job list both measurements run: job i belongs to session
// i mod Sessions, or to none.
type workload struct {
	n        int
	sessions []string // empty: anonymous
	payload  json.RawMessage
}

func newWorkload(cfg *Config) *workload {
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
func (p *pacer) result(name string, run *Measurement) *Measurement {
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
	run.Latency = localfleet.PercentilesOf(lat)
	return run
}
