package queue_test

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// TestMemoryConsumers: Config.MemoryConsumers makes every job consumer
// memory-stored; it is fixed once they exist (the server cannot change it),
// Open adopts it, and RecreateConsumer makes a lost consumer again with the
// same configuration.
func TestMemoryConsumers(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4, MemoryConsumers: true})
	ctx := testCtx(t)
	names := []string{queue.AnyConsumerName}
	for p := range 4 {
		names = append(names, queue.PartitionConsumerName(p))
	}
	for _, name := range names {
		c, err := b.topo.Jobs.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if !c.CachedInfo().Config.MemoryStorage {
			t.Errorf("consumer %s is not memory-stored", name)
		}
	}

	var me *queue.MismatchError
	_, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 4})
	if !errors.As(err, &me) || me.Field != "MemoryStorage" || me.Want != false || me.Have != true {
		t.Fatalf("Ensure with file-stored consumers over memory-stored ones: %v", err)
	}
	topo, err := queue.Open(ctx, b.js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !topo.Config.MemoryConsumers {
		t.Error("Open did not adopt MemoryConsumers from the consumers")
	}

	// What a server restart does to them, done by hand.
	for _, name := range []string{"p-2", queue.AnyConsumerName} {
		if err := topo.Jobs.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := topo.RecreateConsumer(ctx, name); err != nil {
			t.Fatalf("recreate %s: %v", name, err)
		}
		c, err := topo.Jobs.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cc := c.CachedInfo().Config
		if !cc.MemoryStorage || cc.AckPolicy != jetstream.AckExplicitPolicy || cc.MaxDeliver != topo.Config.MaxDeliver {
			t.Errorf("recreated %s: %+v", name, cc)
		}
	}
	// An existing consumer is left alone; a name that is not a job
	// consumer is refused.
	if err := topo.RecreateConsumer(ctx, "p-1"); err != nil {
		t.Errorf("recreate an existing consumer: %v", err)
	}
	for _, bad := range []string{"p-4", "p-x", "other", "p--1", "p-01"} {
		if err := topo.RecreateConsumer(ctx, bad); err == nil {
			t.Errorf("RecreateConsumer(%q) = nil, want an error", bad)
		}
	}

	// The default stays file-stored.
	d := setup(t, queue.Config{Partitions: 2})
	c, err := d.topo.Jobs.Consumer(ctx, "p-0")
	if err != nil {
		t.Fatal(err)
	}
	if c.CachedInfo().Config.MemoryStorage || d.topo.Config.MemoryConsumers {
		t.Error("default consumers are memory-stored")
	}
}
