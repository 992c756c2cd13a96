package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// ErrStart is wrapped by every error Start returns.
var ErrStart = errors.New("embedded: cannot start nats-server")

// ErrStoreLocked is wrapped, beside ErrStart, by LockStore's error when
// another process holds the store directory.
var ErrStoreLocked = errors.New("store directory in use")

// lockFile is LockStore's file in the store directory; it holds the pid of
// the process that holds the lock.
const lockFile = "procfleet.lock"

// ErrInvalidConfig is wrapped, beside ErrStart, by the errors Start returns
// for a bad Config; each names the field.
var ErrInvalidConfig = errors.New("embedded: invalid config")

// Config describes one embedded server. The zero value is not usable:
// StoreDir is required.
type Config struct {
	// Host is the interface to listen on. Default "127.0.0.1"; "0.0.0.0"
	// listens on all interfaces (the returned URL then still uses
	// 127.0.0.1).
	Host string

	// Port is the client port. Default 0 means a random free port, as does
	// -1; use 4222 for the standard port.
	Port int

	// StoreDir is JetStream's storage directory. Required: there is no
	// default on purpose, because the server's own fallback is a shared temp
	// folder that outlives the process and leaks state between runs.
	StoreDir string

	// ServerName names the server in logs and cluster metadata. Default ""
	// lets the server use its generated id.
	ServerName string

	// MaxMemory caps JetStream memory storage in bytes. Default 0 lets the
	// server pick (a share of system memory).
	MaxMemory int64

	// MaxStore caps JetStream file storage in bytes. Default 0 lets the
	// server pick (a share of free disk).
	MaxStore int64

	// MonitorPort serves the HTTP monitoring endpoints (/varz, /jsz, ...)
	// on Host. Default 0 disables monitoring; -1 picks a random port.
	MonitorPort int

	// Logger receives the server's log. Default nil discards it. Notices
	// map to Info, Fatal to Error (an embedded server must never exit the
	// process).
	Logger *zap.Logger

	// Debug also forwards the server's debug and trace lines. Default false.
	Debug bool

	// ReadyTimeout bounds how long Start waits for the server to accept
	// clients, on top of ctx. Default 10s.
	ReadyTimeout time.Duration

	// Options, when non-nil, is the base server configuration (accounts,
	// TLS, limits, e.g. from server.ProcessConfigFile). It is copied, never
	// modified. Host, Port, StoreDir, JetStream and NoSigs above always win.
	Options *server.Options
}

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.Host == "" {
		c.Host = "127.0.0.1"
	}
	if c.Port == 0 {
		c.Port = server.RANDOM_PORT
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 10 * time.Second
	}
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %w: %s", ErrStart, ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.StoreDir == "":
		return bad("StoreDir is required")
	case c.Port < -1 || c.Port > 65535:
		return bad("Port must be between -1 and 65535, got %d", c.Port)
	case c.MonitorPort < -1 || c.MonitorPort > 65535:
		return bad("MonitorPort must be between -1 and 65535, got %d", c.MonitorPort)
	case c.MaxMemory < 0:
		return bad("MaxMemory cannot be negative")
	case c.MaxStore < 0:
		return bad("MaxStore cannot be negative")
	case c.ReadyTimeout < 0:
		return bad("ReadyTimeout cannot be negative")
	}
	return nil
}

// Start starts a server and returns once it accepts clients, with the URL
// clients should use. ctx bounds only the start-up: the server keeps running
// until the caller calls Shutdown (and WaitForShutdown) on it. On error no
// server is left running.
func Start(ctx context.Context, cfg Config) (*server.Server, string, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, "", err
	}

	var opts server.Options
	if cfg.Options != nil {
		opts = *cfg.Options
	}
	opts.Host = cfg.Host
	opts.Port = cfg.Port
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	opts.NoSigs = true
	if cfg.ServerName != "" {
		opts.ServerName = cfg.ServerName
	}
	if cfg.MaxMemory > 0 {
		opts.JetStreamMaxMemory = cfg.MaxMemory
	}
	if cfg.MaxStore > 0 {
		opts.JetStreamMaxStore = cfg.MaxStore
	}
	if cfg.MonitorPort != 0 {
		opts.HTTPHost = cfg.Host
		opts.HTTPPort = cfg.MonitorPort
	}
	opts.Debug, opts.Trace = cfg.Debug, cfg.Debug

	s, err := server.NewServer(&opts)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrStart, err)
	}
	s.SetLoggerV2(zapLogger{cfg.Logger.Sugar()}, cfg.Debug, cfg.Debug, false)
	s.Start()

	if err := waitReady(ctx, s, cfg.ReadyTimeout); err != nil {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, "", err
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, "", fmt.Errorf("%w: JetStream did not start (see the server log; is %s writable?)", ErrStart, cfg.StoreDir)
	}
	return s, clientURL(s), nil
}

// waitReady polls in short slices because ReadyForConnections cannot be
// interrupted and a failed listener (port in use) never becomes ready.
func waitReady(ctx context.Context, s *server.Server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if s.ReadyForConnections(50 * time.Millisecond) {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrStart, err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: not ready for connections after %s (see the server log)", ErrStart, timeout)
		}
	}
}

// clientURL is the server's client URL, with an unspecified listen address
// replaced by loopback so the URL is dialable.
func clientURL(s *server.Server) string {
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		return s.ClientURL()
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return s.ClientURL()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if addr, ok := s.Addr().(*net.TCPAddr); ok {
		port = strconv.Itoa(addr.Port)
	}
	u.Host = net.JoinHostPort(host, port)
	return u.String()
}

// zapLogger adapts zap to the server's Logger interface.
type zapLogger struct{ l *zap.SugaredLogger }

func (z zapLogger) Noticef(format string, v ...any) { z.l.Infof(format, v...) }
func (z zapLogger) Warnf(format string, v ...any)   { z.l.Warnf(format, v...) }
func (z zapLogger) Errorf(format string, v ...any)  { z.l.Errorf(format, v...) }
func (z zapLogger) Debugf(format string, v ...any)  { z.l.Debugf(format, v...) }
func (z zapLogger) Tracef(format string, v ...any)  { z.l.Debugf(format, v...) }

// Fatalf logs at Error level: the server's own Fatalf exits the process,
// which an embedding program must never suffer.
func (z zapLogger) Fatalf(format string, v ...any) { z.l.Errorf(format, v...) }

// StartTemp starts a server like Start, with JetStream in a new temporary
// directory in parent named after pattern (as os.MkdirTemp: "" is the
// system's temporary directory), on 127.0.0.1 and a random
// port. stop shuts the server down and removes the directory. It is the
// throwaway server of the demo, the benchmark and the chaos run.
func StartTemp(ctx context.Context, parent, pattern string, log *zap.Logger) (srv *server.Server, url string, stop func(), err error) {
	dir, err := os.MkdirTemp(parent, pattern)
	if err != nil {
		return nil, "", nil, fmt.Errorf("%w: %v", ErrStart, err)
	}
	srv, url, err = Start(ctx, Config{StoreDir: dir, Logger: log})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, "", nil, err
	}
	return srv, url, func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}, nil
}
