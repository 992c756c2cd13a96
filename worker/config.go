package worker

import (
	"errors"
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

const (
	defaultStartupTimeout = 30 * time.Second
	defaultStopGrace      = 5 * time.Second
)

// withDefaults returns a copy of c with defaults applied, or an error naming
// the first invalid field.
func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		c.ID = fmt.Sprintf("w-%08x", rand.Uint32())
	}
	if c.StartupTimeout == 0 {
		c.StartupTimeout = defaultStartupTimeout
	}
	if c.StopGrace == 0 {
		c.StopGrace = defaultStopGrace
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = protocol.DefaultMaxFrame
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	switch {
	case len(c.Command) == 0 || c.Command[0] == "":
		return c, errors.New("Command is required")
	case c.StartupTimeout < 0:
		return c, errors.New("StartupTimeout cannot be negative")
	case c.StopGrace < 0:
		return c, errors.New("StopGrace cannot be negative")
	case c.MaxFrame < 0:
		return c, errors.New("MaxFrame cannot be negative")
	}
	return c, nil
}
