package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

func TestMain(m *testing.M) {
	sharedtest.VerifyTestMain(m)
}

// testBundle is one test's world: its own server, connection and topology.
type testBundle struct {
	url  string
	nc   *nats.Conn
	js   jetstream.JetStream
	cfg  queue.Config
	topo *queue.Topology
}

// startServer runs an embedded server for t. The queue tests use package
// embedded directly rather than fleettest, which depends on the agent and
// so on this package.
func startServer(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, url, err := embedded.Start(ctx, embedded.Config{
		StoreDir: t.TempDir(),
		Logger:   zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return url
}

func connect(t *testing.T, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// setup starts a server and ensures a topology. Partitions default to 8 to
// keep Ensure cheap; tests about partitioning use 64.
func setup(t *testing.T, cfg queue.Config) *testBundle {
	t.Helper()
	if cfg.Partitions == 0 {
		cfg.Partitions = 8
	}
	b := &testBundle{url: startServer(t)}
	b.nc, b.js = connect(t, b.url)
	topo, err := queue.Ensure(testCtx(t), b.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b.topo, b.cfg = topo, topo.Config
	return b
}

// testCtx is cancelled when the test ends and bounds every call.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it returns nil or the deadline passes.
var eventually = sharedtest.Eventually
