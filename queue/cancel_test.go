package queue_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// Ensure creates FLEET_CANCELS capturing fleet.cancel.*, one message per id,
// kept CancelTTL; a plain publish is a durable cancel; FollowCancels hands
// over the stored cancels (catching up) and then new ones, in order.
func TestCancelsStreamAndFeed(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	info, err := b.js.Stream(ctx, "FLEET_CANCELS")
	if err != nil {
		t.Fatal(err)
	}
	c := info.CachedInfo().Config
	if len(c.Subjects) != 1 || c.Subjects[0] != "fleet.cancel.*" || c.MaxMsgsPerSubject != 1 ||
		c.MaxAge != queue.DefaultCancelTTL || c.Retention != jetstream.LimitsPolicy {
		t.Fatalf("cancels stream config: %+v", c)
	}
	if err := queue.OpenCancels(ctx, b.js, b.cfg); err != nil {
		t.Fatal(err)
	}

	// Stored before anyone follows: by the topology, and by a plain publish.
	if err := b.topo.Cancel(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.Cancel(ctx, "a"); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := b.nc.Request("fleet.cancel.b", nil, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	got := make(chan string, 16)
	feed, err := b.topo.FollowCancels(ctx, func(id string, at time.Time) {
		if at.IsZero() {
			t.Errorf("cancel %s without a timestamp", id)
		}
		mu.Lock()
		seen = append(seen, id)
		mu.Unlock()
		got <- id
	})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Stop()
	select {
	case <-feed.CaughtUp():
	case <-time.After(10 * time.Second):
		t.Fatal("feed did not catch up")
	}
	mu.Lock()
	caught := append([]string(nil), seen...)
	mu.Unlock()
	// One message per id: "a" twice is kept once.
	if len(caught) != 2 || caught[0] != "a" || caught[1] != "b" {
		t.Fatalf("caught up with %v, want [a b]", caught)
	}
	<-got
	<-got
	if err := b.topo.Cancel(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != "c" {
			t.Fatalf("live cancel %q, want c", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("live cancel not delivered")
	}

	if err := b.topo.Cancel(ctx, "bad.id"); !errors.Is(err, queue.ErrBadRequest) {
		t.Fatalf("invalid id: %v, want ErrBadRequest", err)
	}
}

// An empty stream is caught up at once.
func TestCancelFeedEmpty(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	feed, err := b.topo.FollowCancels(testCtx(t), func(string, time.Time) {})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Stop()
	select {
	case <-feed.CaughtUp():
	case <-time.After(10 * time.Second):
		t.Fatal("empty feed not caught up")
	}
}

func TestCancelCovers(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	window := 2 * time.Minute
	cases := []struct {
		enqueued time.Time
		want     bool
	}{
		{at.Add(-time.Hour), true},  // the job waited; canceled later
		{at.Add(time.Minute), true}, // published just after its cancel
		{at.Add(window), false},     // a new job reusing the id
		{at.Add(window - time.Nanosecond), true},
	}
	for _, c := range cases {
		if got := queue.CancelCovers(at, c.enqueued, window); got != c.want {
			t.Errorf("enqueued %v after the cancel: covers = %v, want %v", c.enqueued.Sub(at), got, c.want)
		}
	}
}

func TestCancelTTLAtLeastDedupWindow(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{DedupWindow: time.Hour, CancelTTL: time.Minute}.WithDefaults()
	if err := cfg.Validate(); !errors.Is(err, queue.ErrInvalidConfig) {
		t.Fatalf("CancelTTL below the dedup window: %v", err)
	}
}

// A topology from before cancels existed (no FLEET_CANCELS) says so: a
// cancel, the feed and OpenCancels fail with ErrNoTopology, and Ensure adds
// the stream.
func TestCancelsStreamMissing(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)
	if err := b.js.DeleteStream(ctx, "FLEET_CANCELS"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.Cancel(ctx, "x"); !errors.Is(err, queue.ErrNoTopology) {
		t.Fatalf("cancel: %v, want ErrNoTopology", err)
	}
	if _, err := b.topo.FollowCancels(ctx, func(string, time.Time) {}); !errors.Is(err, queue.ErrNoTopology) {
		t.Fatalf("follow: %v, want ErrNoTopology", err)
	}
	if err := queue.OpenCancels(ctx, b.js, b.cfg); !errors.Is(err, queue.ErrNoTopology) {
		t.Fatalf("open: %v, want ErrNoTopology", err)
	}
	topo, err := queue.Ensure(ctx, b.js, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Cancel(ctx, "x"); err != nil {
		t.Fatalf("cancel after Ensure: %v", err)
	}
}
