package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/sharedtest"
)

func TestMain(m *testing.M) {
	sharedtest.VerifyTestMain(m)
}

func start(t *testing.T, cfg embedded.Config) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, url, err := embedded.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return url
}

func TestStartJetStream(t *testing.T) {
	t.Parallel()
	url := start(t, embedded.Config{StoreDir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Errorf("url %q", url)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "t.1", []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// TestStartAllInterfaces: listening on 0.0.0.0 still yields a dialable URL.
func TestStartAllInterfaces(t *testing.T) {
	t.Parallel()
	url := start(t, embedded.Config{Host: "0.0.0.0", StoreDir: t.TempDir()})
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("url %q", url)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
}

func TestStartErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	if _, _, err := embedded.Start(ctx, embedded.Config{}); !errors.Is(err, embedded.ErrStart) || !errors.Is(err, embedded.ErrInvalidConfig) || !strings.Contains(err.Error(), "StoreDir") {
		t.Errorf("no StoreDir: %v", err)
	}
	if _, _, err := embedded.Start(ctx, embedded.Config{StoreDir: t.TempDir(), Port: 70000}); !errors.Is(err, embedded.ErrStart) || !errors.Is(err, embedded.ErrInvalidConfig) || !strings.Contains(err.Error(), "Port") {
		t.Errorf("bad port: %v", err)
	}

	// A taken port fails within ReadyTimeout instead of hanging.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, _, err = embedded.Start(ctx, embedded.Config{StoreDir: t.TempDir(), Port: port, ReadyTimeout: time.Second, Logger: zaptest.NewLogger(t)})
	if !errors.Is(err, embedded.ErrStart) {
		t.Errorf("port %s in use: %v", strconv.Itoa(port), err)
	}

	// A cancelled context stops the wait too.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	_, _, err = embedded.Start(cctx, embedded.Config{StoreDir: t.TempDir(), Port: l2.Addr().(*net.TCPAddr).Port})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
}

// TestLockStore: one process at a time holds a store directory; the second
// is told who holds it, and may take it once it is released.
func TestLockStore(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "store")
	unlock, err := embedded.LockStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = embedded.LockStore(dir)
	if !errors.Is(err, embedded.ErrStoreLocked) || !errors.Is(err, embedded.ErrStart) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("a second lock: %v, want ErrStoreLocked naming pid %d", err, os.Getpid())
	}
	unlock()
	again, err := embedded.LockStore(dir)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	again()
}
