package fleettest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/fleettest"
)

// The package's TestMain (with goleak) lives with the fleet helpers' tests.

func TestStartServer(t *testing.T) {
	t.Parallel()
	s := fleettest.StartServer(t)
	if s.URL == "" || s.StoreDir == "" || !s.JetStreamEnabled() {
		t.Fatalf("server %+v", s)
	}
	js := s.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.x", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	nc := s.Connect(t)
	if !nc.IsConnected() {
		t.Fatal("not connected")
	}
}

// TestStartServerRestart: a second server on the first one's StoreDir sees
// its streams, which is how tests exercise a broker restart.
func TestStartServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	reuse := fleettest.WithServerConfig(func(c *embedded.Config) { c.StoreDir = dir })
	// The deadline covers two server starts (JetStream recovery from disk
	// included) on what may be a starved machine.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	first := fleettest.StartServer(t, reuse)
	js := first.JetStream(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "KEEP", Subjects: []string{"keep"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "keep", []byte("x")); err != nil {
		t.Fatal(err)
	}
	first.Shutdown()
	first.WaitForShutdown()

	second := fleettest.StartServer(t, reuse)
	s, err := second.JetStream(t).Stream(ctx, "KEEP")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Errorf("%d messages after restart, want 1", n)
	}
}
