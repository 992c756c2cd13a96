package fleettest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
)

// Server is an embedded nats-server with JetStream that lives as long as the
// test that started it.
type Server struct {
	*server.Server
	// URL is what clients dial, e.g. "nats://127.0.0.1:41234".
	URL string
	// StoreDir is JetStream's directory (inside t.TempDir() unless
	// WithServerConfig changed it).
	StoreDir string
}

// ServerOption tunes StartServer.
type ServerOption func(*embedded.Config)

// WithServerLogger sends the server's log to log instead of the default: the
// test's log at Warn level and above (the server's notices would drown the
// test's own lines under -v).
func WithServerLogger(log *zap.Logger) ServerOption {
	return func(c *embedded.Config) { c.Logger = log }
}

// WithServerConfig edits the embedded configuration directly, e.g. to reuse
// a StoreDir across a restart or to set accounts through Options.
func WithServerConfig(fn func(*embedded.Config)) ServerOption {
	return func(c *embedded.Config) { fn(c) }
}

// Restartable returns an option that gives every server started with it the
// same store directory and the same loopback port, so that a test can stop
// its server and start it again, and clients reconnect to the same URL. The
// port is picked free now, then bound by the first server.
func Restartable(t testing.TB) ServerOption {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fleettest: pick a port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatalf("fleettest: pick a port: %v", err)
	}
	dir := t.TempDir()
	return WithServerConfig(func(c *embedded.Config) { c.StoreDir, c.Port = dir, port })
}

// StartServer starts an embedded nats-server with JetStream in t.TempDir()
// (NoSigs, 127.0.0.1, random port), waits until it accepts clients and
// registers its shutdown with t.Cleanup. It fails the test if the server
// cannot start.
func StartServer(t testing.TB, opts ...ServerOption) *Server {
	t.Helper()
	cfg := embedded.Config{
		Host:     "127.0.0.1",
		StoreDir: t.TempDir(),
		Logger:   zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Named("nats-server"),
	}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, url, err := embedded.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("fleettest: %v", err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return &Server{Server: s, URL: url, StoreDir: cfg.StoreDir}
}

// Connect dials the server and closes the connection when the test ends
// (before the server shuts down, since cleanups run in reverse order).
func (s *Server) Connect(t testing.TB, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.Name(t.Name())}, opts...)
	nc, err := nats.Connect(s.URL, opts...)
	if err != nil {
		t.Fatalf("fleettest: connect %s: %v", s.URL, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a fresh connection that closes
// when the test ends.
func (s *Server) JetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(s.Connect(t))
	if err != nil {
		t.Fatalf("fleettest: jetstream: %v", err)
	}
	return js
}
