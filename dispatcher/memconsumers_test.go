package dispatcher_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestServeRecreatesMemoryConsumers: with memory-stored job consumers and
// results, the consumers and the results stream a server restart loses
// (here deleted by hand) are made again by `serve` within a sweep, for
// agents whose NATS user may not create them; they come back
// memory-stored.
func TestServeRecreatesMemoryConsumers(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	startServe(t, nc, dispatcher.ServeConfig{Queue: queue.Config{Partitions: 4, MemoryConsumers: true, ResultsStorage: "memory"}})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	jobs, err := js.Stream(ctx, "FLEET_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	lost := []string{"p-1", queue.AnyConsumerName}
	for _, name := range lost {
		if err := jobs.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := js.DeleteStream(ctx, "FLEET_RESULTS"); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 30*time.Second, func() error {
		rs, err := js.Stream(ctx, "FLEET_RESULTS")
		if err != nil {
			return err
		}
		if rs.CachedInfo().Config.Storage != jetstream.MemoryStorage {
			return errors.New("results stream came back file-stored")
		}
		for _, name := range lost {
			c, err := jobs.Consumer(ctx, name)
			if err != nil {
				return err
			}
			if !c.CachedInfo().Config.MemoryStorage {
				return errors.New(name + " came back file-stored")
			}
		}
		return nil
	})
}
