package worker

import (
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker/protocol"
)

// Config describes the process to run. The zero value of every field except
// Command selects its default.
type Config struct {
	// ID names the worker in logs and errors. Default: "w-" plus 8 random
	// hex digits.
	ID string
	// Command is the argv to run, with no shell; Command[0] is looked up in
	// PATH. Required.
	Command []string
	// Env is the child's full environment. nil inherits os.Environ(); an
	// empty non-nil slice gives the child an empty environment.
	Env []string
	// Dir is the child's working directory. "" means the current one.
	Dir string
	// StartupTimeout bounds the wait for the ready frame. Default 30s;
	// negative is an error.
	StartupTimeout time.Duration
	// StopGrace is how long each step of Stop (shutdown frame and stdin
	// EOF, then SIGTERM) waits before escalating. Default 5s; negative is an
	// error.
	StopGrace time.Duration
	// MaxFrame is the largest frame body accepted from or sent to the
	// worker. Default protocol.DefaultMaxFrame (16 MiB); negative is an
	// error.
	MaxFrame int
	// Logger receives the worker's stderr, one Info entry per line, and the
	// worker's lifecycle events, tagged with the worker id and pid.
	// Default zap.NewNop().
	Logger *zap.Logger
}

// Defaults of Config that the programs' flags show too.
const (
	DefaultStartupTimeout = 30 * time.Second
	DefaultStopGrace      = 5 * time.Second
)

// setDefaults sets every zero field to its default.
func (c *Config) setDefaults() {
	if c.ID == "" {
		c.ID = fmt.Sprintf("w-%08x", rand.Uint32())
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = DefaultStartupTimeout
	}
	if c.StopGrace == 0 {
		c.StopGrace = DefaultStopGrace
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = protocol.DefaultMaxFrame
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
}

// validate names the first invalid field; call it after setDefaults.
func (c *Config) validate() error {
	bad := func(msg string) error { return fmt.Errorf("%w: %s", ErrInvalidConfig, msg) }
	switch {
	case len(c.Command) == 0 || c.Command[0] == "":
		return bad("Command is required")
	case c.StartupTimeout < 0:
		return bad("StartupTimeout cannot be negative")
	case c.StopGrace < 0:
		return bad("StopGrace cannot be negative")
	case c.MaxFrame < 0:
		return bad("MaxFrame cannot be negative")
	}
	return nil
}
