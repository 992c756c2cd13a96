package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// natsLoop answers jobs as an agent does on the NATS side, with nothing
// behind it: it pulls a batch from a job consumer, stores for each job the
// result an echo worker's reply would give (the payload, through the
// agent's own encoder and Nats-Msg-Id), and acks each job once its result
// is stored. No pool, no worker, no bookkeeping, and batches as large as
// the consumer has: its cost per job is the floor of the fleet's NATS
// pattern (job stored, delivered and acked; result stored and delivered),
// below which no agent on this server can go.
type natsLoop struct {
	nc     *nats.Conn
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	mu     sync.Mutex
	err    error
}

// natsFloorName is the NATS floor's row in the table.
const natsFloorName = "NATS floor"

// DefaultNATSFloorBatch is how many jobs one pull of the NATS floor asks
// for: the agent's largest adaptive capacity.
const DefaultNATSFloorBatch = 32

// startNATSLoop connects to url and starts one pull loop per job consumer
// the workload uses: the anonymous jobs' consumer, or every partition's
// (with filtered above 0, that many consumers that share the partitions
// out as their filters); each pull asks for up to batch jobs.
func startNATSLoop(ctx context.Context, url string, qcfg queue.Config, sessions bool, filtered, batch int) (*natsLoop, error) {
	nc, err := nats.Connect(url, nats.Name("procfleet-bench-nats-floor"))
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		return nil, err
	}
	topo, err := queue.Open(ctx, js, qcfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	var cons []jetstream.Consumer
	if sessions && filtered > 0 {
		if cons, err = filteredConsumers(ctx, topo, filtered); err != nil {
			nc.Close()
			return nil, err
		}
	} else if sessions {
		for p := range topo.Config.Partitions {
			c, err := topo.PartitionConsumer(ctx, p)
			if err != nil {
				nc.Close()
				return nil, err
			}
			cons = append(cons, c)
		}
	} else {
		c, err := topo.AnyConsumer(ctx)
		if err != nil {
			nc.Close()
			return nil, err
		}
		cons = append(cons, c)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &natsLoop{nc: nc, cancel: cancel}
	for _, c := range cons {
		l.wg.Go(func() {
			if err := l.serve(lctx, topo, c, batch); err != nil && lctx.Err() == nil {
				l.mu.Lock()
				l.err = errors.Join(l.err, err)
				l.mu.Unlock()
			}
		})
	}
	return l, nil
}

// filteredConsumers replaces the partition consumers of the bench's own
// server by n consumers like them, consumer i filtering the partitions p
// with p % n == i: the one-consumer-per-agent design, for n agents that
// share the partitions out.
func filteredConsumers(ctx context.Context, topo *queue.Topology, n int) ([]jetstream.Consumer, error) {
	first, err := topo.PartitionConsumer(ctx, 0)
	if err != nil {
		return nil, err
	}
	like := first.CachedInfo().Config
	filters := make([][]string, n)
	for p := range topo.Config.Partitions {
		filters[p%n] = append(filters[p%n], topo.Config.PartitionFilter(p))
		// A work-queue stream refuses overlapping filters.
		if err := topo.Jobs.DeleteConsumer(ctx, queue.PartitionConsumerName(p)); err != nil {
			return nil, fmt.Errorf("delete partition consumer %d: %w", p, err)
		}
	}
	cons := make([]jetstream.Consumer, 0, n)
	for i, fs := range filters {
		if len(fs) == 0 {
			continue
		}
		cc := like
		cc.Durable = fmt.Sprintf("nats-floor-%d", i)
		cc.Name, cc.Description = cc.Durable, "bench: several partitions through one consumer"
		cc.FilterSubject, cc.FilterSubjects = "", fs
		c, err := topo.Jobs.CreateConsumer(ctx, cc)
		if err != nil {
			return nil, err
		}
		cons = append(cons, c)
	}
	return cons, nil
}

// serve pulls from c until ctx ends.
func (l *natsLoop) serve(ctx context.Context, topo *queue.Topology, c jetstream.Consumer, batch int) error {
	type pending struct {
		msg jetstream.Msg
		f   jetstream.PubAckFuture
	}
	var held []pending
	for ctx.Err() == nil {
		msgs, err := c.Fetch(batch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return err
		}
		held = held[:0]
		for msg := range msgs.Messages() {
			meta, err := msg.Metadata()
			if err != nil {
				return err
			}
			job, err := queue.ParseJob(msg.Subject(), msg.Headers(), msg.Data(), meta.Sequence.Stream, topo.Config)
			if err != nil {
				return err
			}
			now := time.Now()
			f, err := topo.StoreResultAsync(&queue.Result{
				ID: job.ID, JobSeq: meta.Sequence.Stream, Queue: topo.Config.QueueName(), Session: job.Session,
				Agent: "nats-floor", Attempt: int(meta.NumDelivered), OK: true, Result: job.Payload,
				EnqueuedAt: meta.Timestamp, StartedAt: now, FinishedAt: now,
			})
			if err != nil {
				return err
			}
			held = append(held, pending{msg, f})
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && ctx.Err() == nil {
			return err
		}
		// Ack after store, as the agent does.
		for _, p := range held {
			select {
			case <-p.f.Ok():
			case err := <-p.f.Err():
				return fmt.Errorf("store result: %w", err)
			case <-ctx.Done():
				return nil
			}
			if err := p.msg.Ack(); err != nil {
				return err
			}
		}
	}
	return nil
}

// stop ends the loops and reports the first error one of them met.
func (l *natsLoop) stop() error {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
		l.nc.Close()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}
