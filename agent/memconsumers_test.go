package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestMemoryConsumersSurviveServerRestart: with queue.Config.MemoryConsumers
// a restart of the NATS server loses every job consumer (their state lived
// in its memory) but no job (they live in the file-stored jobs stream). The
// agent recreates each consumer it finds gone, so the jobs that waited in
// the stream across the restart, held ones included, and the jobs submitted
// after it all get their results. Nothing else recreates them here: the
// test's client made the topology once, before the restart.
func TestMemoryConsumersSurviveServerRestart(t *testing.T) {
	t.Parallel()
	same := fleettest.Restartable(t)
	first := fleettest.StartServer(t, same)

	cfg := fleetConfig(1, 2)
	cfg.Server = first
	cfg.Agent.Queue.MemoryConsumers = true
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, name := range []string{queue.PartitionConsumerName(0), queue.AnyConsumerName} {
		c, err := f.Topology().Jobs.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if !c.CachedInfo().Config.MemoryStorage {
			t.Fatalf("consumer %s is not memory-stored", name)
		}
	}

	// Two sessions whose first job runs long, so that the jobs behind
	// them wait (held by the agent or in the stream) across the restart.
	var ids []string
	for s := range 2 {
		session := fmt.Sprintf("mem-%d", s)
		ids = append(ids, submit(t, f, session, &queue.Job{ID: fmt.Sprintf("long-%d", s), Command: "sleep", Payload: json.RawMessage(`{"ms":1500}`)}))
		for i := range 5 {
			ids = append(ids, submit(t, f, session, &queue.Job{ID: fmt.Sprintf("before-%d-%d", s, i), Command: "echo", Payload: json.RawMessage(fmt.Sprint(i))}))
		}
	}
	ids = append(ids, submit(t, f, "", &queue.Job{ID: "before-anon", Command: "sleep", Payload: json.RawMessage(`{"ms":1500}`)}))

	stopAgentsFirst(t, f)
	first.Shutdown()
	first.WaitForShutdown()
	fleettest.StartServer(t, same)

	// The restarted server has the jobs stream, not its consumers (until
	// the agent makes them again).
	for _, s := range []string{"mem-0", "mem-1"} {
		p := f.Topology().PartitionOf(s)
		fleettest.Eventually(t, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := f.Topology().Jobs.Consumer(ctx, queue.PartitionConsumerName(p))
			if err != nil {
				return err
			}
			if !c.CachedInfo().Config.MemoryStorage {
				return errors.New("recreated consumer is not memory-stored")
			}
			return nil
		})
	}

	for s := range 2 {
		for i := range 5 {
			sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
			id, err := submitRetry(sctx, f, fmt.Sprintf("mem-%d", s), &queue.Job{ID: fmt.Sprintf("after-%d-%d", s, i), Command: "echo", Payload: json.RawMessage(fmt.Sprint(i))})
			scancel()
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
	}
	for _, id := range ids {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		r, err := f.Client.Result(ctx, id, nil)
		cancel()
		if err != nil {
			t.Fatalf("job %s after the restart: %v", id, err)
		}
		if !r.OK {
			t.Errorf("job %s failed: %+v", id, r.Error)
		}
	}
}

// submitRetry submits until the (reconnecting) client gets the stream's
// ack; the job id makes a retried submission a duplicate, not a second job.
func submitRetry(ctx context.Context, f *fleettest.Fleet, session string, job *queue.Job) (string, error) {
	for {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		id, err := f.Client.Submit(pctx, session, job)
		cancel()
		if err == nil {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("submit %s: %w (last error %v)", job.ID, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
