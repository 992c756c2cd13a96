package testworker

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/procfleet/procfleet/internal/execlog"
)

// Environment variables Main reads. HelperWorker sets them from Options; they
// are exported for tests that build a command line by hand.
const (
	// EnvHelper set to "1" makes IsHelper true.
	EnvHelper = "PROCFLEET_TESTWORKER"
	// EnvStart selects the start-up mode: "crash", "never_ready", "garbage",
	// "close_stdout", "ready_exit"; anything else (or unset) starts normally.
	EnvStart = "PROCFLEET_TESTWORKER_START"
	// EnvStartDelay is a time.Duration to sleep before the ready frame.
	EnvStartDelay = "PROCFLEET_TESTWORKER_START_DELAY"
	// EnvIgnoreTerm set to "1" makes the worker ignore SIGTERM, the
	// shutdown frame and EOF on stdin, so only SIGKILL ends it.
	EnvIgnoreTerm = "PROCFLEET_TESTWORKER_IGNORE_TERM"
	// EnvExecLog names a file the worker appends one line to for every call
	// it starts, in package execlog's format. Reliability tests and the
	// chaos run read it to count executions per job across processes.
	EnvExecLog = execlog.Env
)

// Start-up modes, the values of EnvStart.
const (
	modeCrash       = "crash"
	modeNeverReady  = "never_ready"
	modeGarbage     = "garbage"
	modeCloseStdout = "close_stdout"
	modeReadyExit   = "ready_exit"
)

// Option configures the helper worker through one environment variable.
type Option struct {
	key, value string
}

// Env returns the option as a KEY=value environment entry.
func (o Option) Env() string { return o.key + "=" + o.value }

var (
	// StartCrash makes the worker exit with status 1 before its ready frame.
	StartCrash = Option{EnvStart, modeCrash}
	// StartNeverReady makes the worker sleep forever without a ready frame.
	StartNeverReady = Option{EnvStart, modeNeverReady}
	// StartGarbage makes the worker write bytes that are not a frame to
	// stdout before its ready frame.
	StartGarbage = Option{EnvStart, modeGarbage}
	// StartCloseStdout makes the worker close stdout instead of sending its
	// ready frame, and keep running until EOF on stdin.
	StartCloseStdout = Option{EnvStart, modeCloseStdout}
	// StartReadyExit makes the worker exit with status 1 right after its
	// ready frame, reading nothing.
	StartReadyExit = Option{EnvStart, modeReadyExit}
	// IgnoreTerm makes the worker ignore SIGTERM, shutdown and stdin EOF.
	IgnoreTerm = Option{EnvIgnoreTerm, "1"}
)

// ExecLog makes every call append a line to the file at path (see
// EnvExecLog). Lines are written with one O_APPEND write each, so workers in
// many processes can share one file.
func ExecLog(path string) Option { return Option{EnvExecLog, path} }

// StartDelay makes the worker sleep d before sending its ready frame.
func StartDelay(d time.Duration) Option { return Option{EnvStartDelay, d.String()} }

// IsHelper reports whether this process was started as a helper worker.
func IsHelper() bool { return os.Getenv(EnvHelper) == "1" }

func envBool(key string) bool {
	b, _ := strconv.ParseBool(os.Getenv(key))
	return b
}

// Command returns the argv and environment that make the current test
// binary act as a helper worker with opts. fleettest.HelperWorker is the
// public spelling; this one exists for packages that fleettest itself
// depends on, which cannot import it.
//
// The environment is the current one minus any testworker settings this
// process carries, plus the helper switch and opts, and GORACE extended so
// that a -race worker exits without the race detector's 1 s pause.
func Command(opts ...Option) (argv []string, env []string) {
	// os.Executable survives a relative os.Args[0] combined with a
	// different working directory for the child.
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	argv = []string{exe, "-test.run=^$"}
	// A -race binary sleeps 1 s in os.Exit (ThreadSanitizer's
	// atexit_sleep_ms) unless told otherwise; every worker exit in a test
	// would pay it.
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, EnvHelper):
			continue
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "GORACE="+gorace, EnvHelper+"=1")
	for _, o := range opts {
		env = append(env, o.Env())
	}
	return argv, env
}
