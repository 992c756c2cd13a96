package queue_test

import (
	"errors"
	"strings"
	"testing"
	"time"

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

	// The jobs stream decides: an Ensure or Open that does not ask for it
	// adopts it.
	topo, err := queue.Open(ctx, b.js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if !topo.Config.MemoryConsumers {
		t.Error("Open did not adopt MemoryConsumers from the jobs stream")
	}
	if _, err := b.topo.Jobs.Consumer(ctx, "p-3"); err != nil {
		t.Fatal(err)
	}
	// What a server restart does to the consumers, done by hand: an agent
	// whose Open finds the shared consumer gone falls back to Ensure with
	// its own configuration, which must make them memory-stored again.
	if err := b.topo.Jobs.DeleteConsumer(ctx, "p-3"); err != nil {
		t.Fatal(err)
	}
	again, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Config.MemoryConsumers {
		t.Error("Ensure did not adopt MemoryConsumers from the jobs stream")
	}
	if c, err := b.topo.Jobs.Consumer(ctx, "p-3"); err != nil || !c.CachedInfo().Config.MemoryStorage {
		t.Errorf("consumer p-3 made again by Ensure: %v, memory-stored %v", err, err == nil && c.CachedInfo().Config.MemoryStorage)
	}

	// A consumer made otherwise by hand is a mismatch.
	if err := b.topo.Jobs.DeleteConsumer(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	fileCfg := queue.Config{Partitions: 4}.WithDefaults()
	if _, err := b.topo.Jobs.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "p-1", FilterSubject: fileCfg.PartitionFilter(1),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: fileCfg.AckWait, MaxDeliver: fileCfg.MaxDeliver, MaxAckPending: fileCfg.MaxAckPending}); err != nil {
		t.Fatal(err)
	}
	var me *queue.MismatchError
	if _, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 4}); !errors.As(err, &me) || me.Field != "MemoryStorage" {
		t.Fatalf("Ensure over a file-stored consumer of a memory-consumer stream: %v", err)
	}
	if err := b.topo.Jobs.DeleteConsumer(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}

	// RecreateMissingConsumers makes what is missing, and only that.
	if err := b.topo.Jobs.DeleteConsumer(ctx, "p-2"); err != nil {
		t.Fatal(err)
	}
	if n, err := topo.RecreateMissingConsumers(ctx); err != nil || n != 2 {
		t.Fatalf("RecreateMissingConsumers = %d, %v; want 2 (p-1 and p-2)", n, err)
	}
	if n, err := topo.RecreateMissingConsumers(ctx); err != nil || n != 0 {
		t.Fatalf("RecreateMissingConsumers again = %d, %v; want 0", n, err)
	}

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

	// The default stays file-stored; asking for memory-stored consumers
	// later adopts the stream's choice (it was made without), and
	// RecreateMissingConsumers leaves a deleted file-stored consumer to
	// Ensure.
	d := setup(t, queue.Config{Partitions: 2})
	c, err := d.topo.Jobs.Consumer(ctx, "p-0")
	if err != nil {
		t.Fatal(err)
	}
	if c.CachedInfo().Config.MemoryStorage || d.topo.Config.MemoryConsumers {
		t.Error("default consumers are memory-stored")
	}
	if got, err := queue.Ensure(ctx, d.js, queue.Config{Partitions: 2, MemoryConsumers: true}); err != nil || got.Config.MemoryConsumers {
		t.Errorf("Ensure asking for memory-stored consumers on a stream made without: %v, MemoryConsumers %v; want the stream's choice (false)",
			err, err == nil && got.Config.MemoryConsumers)
	}
	if err := d.topo.Jobs.DeleteConsumer(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	if n, err := d.topo.RecreateMissingConsumers(ctx); err != nil || n != 0 {
		t.Errorf("RecreateMissingConsumers on file-stored consumers = %d, %v; want 0", n, err)
	}
}

// TestResultsStorage: the results stream may be stored otherwise than the
// fleet's streams; Open adopts what the stream has, an Ensure asking for
// other storage is a mismatch, and an unknown storage is refused.
func TestResultsStorage(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, ResultsStorage: "memory", ResultsMaxAge: time.Minute})
	ctx := testCtx(t)
	if got := b.topo.Results.CachedInfo().Config; got.Storage != jetstream.MemoryStorage || got.MaxAge != time.Minute {
		t.Fatalf("results stream: storage %v, max age %v; want memory, 1m", got.Storage, got.MaxAge)
	}
	if got := b.topo.Jobs.CachedInfo().Config.Storage; got != jetstream.FileStorage {
		t.Errorf("jobs stream storage %v, want file (the fleet's)", got)
	}
	topo, err := queue.Open(ctx, b.js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if topo.Config.ResultsStorage != "memory" || topo.Config.ResultsMaxAge != time.Minute {
		t.Errorf("Open: ResultsStorage %q, ResultsMaxAge %v", topo.Config.ResultsStorage, topo.Config.ResultsMaxAge)
	}
	var me *queue.MismatchError
	if _, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 2, ResultsStorage: "file", ResultsMaxAge: time.Minute}); !errors.As(err, &me) || me.Field != "Storage" {
		t.Errorf("Ensure with file-stored results over memory-stored ones: %v", err)
	}
	if err := (queue.Config{ResultsStorage: "disk"}).WithDefaults().Validate(); !errors.Is(err, queue.ErrInvalidConfig) {
		t.Errorf("ResultsStorage disk: %v, want ErrInvalidConfig", err)
	}
}

// TestRecreateConsumerMismatch: RecreateConsumer finding its consumer made
// again by someone else with another configuration accepts it if only what
// Ensure tunes in place differs (AckWait), and otherwise reports a
// *MismatchError naming the consumer and the field, leaving it in place.
func TestRecreateConsumerMismatch(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	// remake deletes consumer name and creates it again as tweak makes it.
	remake := func(name string, tweak func(*jetstream.ConsumerConfig)) {
		t.Helper()
		c, err := b.topo.Jobs.Consumer(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cc := c.CachedInfo().Config
		if err := b.topo.Jobs.DeleteConsumer(ctx, name); err != nil {
			t.Fatal(err)
		}
		tweak(&cc)
		if _, err := b.topo.Jobs.CreateConsumer(ctx, cc); err != nil {
			t.Fatal(err)
		}
	}

	remake("p-1", func(cc *jetstream.ConsumerConfig) { cc.AckWait = 3 * b.topo.Config.AckWait })
	if err := b.topo.RecreateConsumer(ctx, "p-1"); err != nil {
		t.Errorf("recreate p-1 over one with another AckWait: %v, want nil", err)
	}

	for _, tc := range []struct {
		name, field string
		tweak       func(*jetstream.ConsumerConfig)
	}{
		// One session's jobs only (a work queue stream allows no overlap).
		{"p-2", "FilterSubject", func(cc *jetstream.ConsumerConfig) {
			cc.FilterSubject = strings.TrimSuffix(b.topo.Config.PartitionFilter(2), "*") + "one"
		}},
		{"p-3", "MemoryStorage", func(cc *jetstream.ConsumerConfig) { cc.MemoryStorage = true }},
		// Without the untransformed session subjects.
		{queue.AnyConsumerName, "FilterSubject", func(cc *jetstream.ConsumerConfig) {
			cc.FilterSubjects = []string{b.topo.Config.AnySubject()}
		}},
	} {
		remake(tc.name, tc.tweak)
		err := b.topo.RecreateConsumer(ctx, tc.name)
		var me *queue.MismatchError
		if !errors.As(err, &me) || me.Field != tc.field || !strings.HasSuffix(me.Resource, "/"+tc.name) {
			t.Errorf("recreate %s over one with another %s: %v, want a MismatchError on it", tc.name, tc.field, err)
			continue
		}
		t.Logf("%s: %v", tc.name, err)
		if _, err := b.topo.Jobs.Consumer(ctx, tc.name); err != nil {
			t.Errorf("%s after the mismatch: %v, want it left in place", tc.name, err)
		}
	}
}
