package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/queue"
)

// load submits jobs at cfg.Rate until ctx ends. A publish that fails is
// retried under the same id (the stream deduplicates), so a job counts as
// accepted exactly once.
func (r *chaosRun) load(ctx context.Context, col *dispatcher.Collector) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 2))
	const tick = 20 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	run := strconv.FormatUint(r.cfg.Seed%1e6, 36)
	var n int
	var retry []*chaosJob
	owed := 0.0
	for {
		select {
		case <-ctx.Done():
			r.mu.Lock()
			r.rejected += len(retry)
			r.mu.Unlock()
			return
		case <-t.C:
		}
		owed += float64(r.cfg.Rate) * tick.Seconds()
		batch := retry
		retry = nil
		for ; owed >= 1; owed-- {
			n++
			j := &chaosJob{ID: fmt.Sprintf("c%s-%d", run, n)}
			if rng.Float64() >= r.cfg.AnonymousShare {
				j.Session = fmt.Sprintf("s%d", rng.IntN(r.cfg.Sessions))
			}
			batch = append(batch, j)
		}
		retry = r.submit(batch, col)
	}
}

// submit publishes a batch and returns the jobs whose publish failed. The
// acks are awaited even after load has ended, so that the last batch is
// counted too.
func (r *chaosRun) submit(batch []*chaosJob, col *dispatcher.Collector) (failed []*chaosJob) {
	futures := make([]jetstream.PubAckFuture, len(batch))
	for i, j := range batch {
		f, err := r.topo.SubmitAsync(j.Session, &queue.Job{ID: j.ID, Command: r.cfg.Command, Payload: r.cfg.Payload})
		if err != nil {
			failed = append(failed, j)
			continue
		}
		futures[i] = f
	}
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case ack := <-f.Ok():
			batch[i].Seq = ack.Sequence
			col.Expect(batch[i].ID)
			r.mu.Lock()
			r.jobs[batch[i].ID] = batch[i]
			r.mu.Unlock()
		case <-f.Err():
			failed = append(failed, batch[i])
		case <-timeout.C:
			// Not known to be accepted: retried under the same id, which
			// the stream deduplicates if it was.
			failed = append(failed, published(batch, futures, i)...)
			return failed
		}
	}
	return failed
}

// published returns the jobs of batch from index i on that were
// published.
func published(batch []*chaosJob, futures []jetstream.PubAckFuture, i int) []*chaosJob {
	var out []*chaosJob
	for ; i < len(batch); i++ {
		if futures[i] != nil {
			out = append(out, batch[i])
		}
	}
	return out
}
