package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker/protocol"
)

// pipeDrainGrace is how long the readers may keep draining stdout and stderr
// after the process has been reaped. Only a descendant that left the
// process group and still holds a pipe open makes them wait that long; then
// the pipes are closed under them so that Done cannot hang.
const pipeDrainGrace = time.Second

// Worker is one running worker process. All methods are safe for concurrent
// use.
type Worker struct {
	id        string
	cfg       Config
	log       *zap.Logger
	cmd       *exec.Cmd
	pid       int
	startedAt time.Time
	commands  []string // set by the reader before ready is closed
	features  []string // likewise
	readyPID  int      // likewise: the pid the ready frame gave

	// Parent ends of the pipes. stdin is closed by Stop (graceful EOF) and
	// by the waiter once the process is reaped; the read ends are closed by
	// their readers, or by the waiter after pipeDrainGrace.
	stdin, stdout, stderr *os.File

	// written counts the bytes written to stdin (countingWriter). The waiter
	// records what the pipe still held when the process was reaped
	// (unreadAtExit, if unreadKnown; guarded by mu) before it closes
	// stdin, so that a failed call can tell whether the worker ever read
	// its frame (unreadCall).
	written      atomic.Int64
	unreadAtExit int
	unreadKnown  bool

	// wlock serialises frames on stdin (a channel rather than a mutex so
	// that Stop can give up on it). Everything below it is guarded by it.
	wlock  chan struct{}
	fw     *protocol.Writer
	enc    *json.Encoder
	encBuf bytes.Buffer
	out    protocol.Message

	// slot admits one call at a time; nextID is guarded by it.
	slot   chan struct{}
	nextID uint64

	// pmu guards the pending call, shared by the caller and the reader.
	pmu        sync.Mutex
	pendingID  uint64 // 0: nothing pending
	pendingFor string // the reply type expected: result or pong
	onProgress func(json.RawMessage)
	lastID     uint64 // the newest id sent: ids up to it that are not pending have ended

	// The reader's own: progress frames dropped for ended requests, and
	// the newest id it logged one for (see dropStale).
	staleDropped uint64
	staleLogged  uint64
	replies      chan reply // capacity 1: the reader never blocks on it

	// mu guards the state below.
	mu       sync.Mutex
	failErr  *Error // first failure; set once
	stopping bool   // Stop or Kill was called
	reaped   bool   // the leader was reaped: its pid may be reused, never signal it again

	ready      chan struct{} // closed by the reader after a valid ready frame
	broken     chan struct{} // closed with failErr set
	exited     chan struct{} // closed after reaping, with exitErr set
	stdoutDone chan struct{}
	stderrDone chan struct{}
	done       chan struct{}
	exitErr    error

	stopOnce sync.Once
}

type reply struct {
	ok    bool
	value json.RawMessage
	err   *protocol.ErrorInfo
}

// Start spawns the worker and waits for its ready frame, within
// cfg.StartupTimeout and ctx. ctx bounds only the start: the process lives
// until Stop, Kill or its own death. On failure the process group has been
// killed and reaped, and the error is an *Error with Reason ErrStartup.
func Start(ctx context.Context, cfg Config) (*Worker, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, &Error{WorkerID: cfg.ID, Reason: ErrStartup, Err: err}
	}
	w := &Worker{
		id:         cfg.ID,
		cfg:        cfg,
		wlock:      make(chan struct{}, 1),
		slot:       make(chan struct{}, 1),
		replies:    make(chan reply, 1),
		ready:      make(chan struct{}),
		broken:     make(chan struct{}),
		exited:     make(chan struct{}),
		stdoutDone: make(chan struct{}),
		stderrDone: make(chan struct{}),
		done:       make(chan struct{}),
	}
	if err := w.spawn(); err != nil {
		return nil, &Error{WorkerID: w.id, Reason: ErrStartup, Err: err}
	}

	timer := time.NewTimer(cfg.StartupTimeout)
	defer timer.Stop()
	var cause error
	select {
	case <-w.ready:
		w.log.Debug("worker ready", zap.Strings("commands", w.commands))
		return w, nil
	case <-w.broken:
		cause = w.failure().Err
	case <-timer.C:
		cause = fmt.Errorf("no ready frame within %v", cfg.StartupTimeout)
	case <-ctx.Done():
		cause = ctx.Err()
	}
	w.fail(ErrStartup, cause)
	<-w.done
	return nil, &Error{WorkerID: w.id, PID: w.pid, Reason: ErrStartup, Err: cause}
}

// spawn starts the process and its three goroutines.
func (w *Worker) spawn() error {
	if err := platformSupported(); err != nil {
		return err
	}
	cmd := exec.Command(w.cfg.Command[0], w.cfg.Command[1:]...)
	if cmd.Err != nil {
		return cmd.Err
	}
	cmd.Env = w.cfg.Env
	cmd.Dir = w.cfg.Dir
	// Environ is what Env nil means (the agent's environment, with PWD set
	// to Dir) or Env itself. The agent's pid goes last, so that it wins
	// over an inherited one (a nested agent's).
	cmd.Env = append(cmd.Environ(), protocol.AgentPIDEnv+"="+strconv.Itoa(os.Getpid()))
	// Its own process group, killed with the agent (see proc_linux.go).
	cmd.SysProcAttr = sysProcAttr()

	// The Worker owns all three pipes instead of using exec's StdoutPipe
	// and friends: exec closes those as soon as the process exits, which
	// would drop a reply still sitting in the pipe, and handing exec an
	// *os.File means it starts no copying goroutines of its own. Because
	// no exec-managed pipe exists, cmd.WaitDelay would have nothing to
	// bound; the waiter goroutine does that job instead (pipeDrainGrace).
	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, wr *os.File, err error) {
		r, wr, err = os.Pipe()
		if err == nil {
			files = append(files, r, wr)
		}
		return r, wr, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return err
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return err
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW

	if err := cmd.Start(); err != nil {
		closeAll()
		return err
	}
	// The child has its copies; ours would keep the pipes open forever.
	inR.Close()
	outW.Close()
	errW.Close()

	w.cmd = cmd
	w.pid = cmd.Process.Pid
	w.startedAt = time.Now()
	w.stdin, w.stdout, w.stderr = inW, outR, errR
	w.fw = protocol.NewWriter(countingWriter{inW, &w.written}, w.cfg.MaxFrame)
	w.enc = json.NewEncoder(&w.encBuf)
	w.enc.SetEscapeHTML(false)
	w.log = w.cfg.Logger.Named("worker").With(zap.String("worker", w.id), zap.Int("pid", w.pid))
	w.log.Debug("worker started", zap.Strings("command", w.cfg.Command))

	go w.readStdout()
	go w.readStderr()
	go w.wait()
	return nil
}

// wait reaps the process and then closes Done once the readers have ended.
func (w *Worker) wait() {
	defer close(w.done)

	if err := waitExitNoReap(w.pid); err != nil {
		w.log.Warn("waitid failed; reaping without group cleanup", zap.Error(err))
	}
	// The leader is a zombie now, so its group id is still reserved: kill
	// whatever descendants remain before the pid can be reused.
	w.mu.Lock()
	if !w.reaped {
		_ = signalGroup(w.pid, syscall.SIGKILL)
	}
	w.reaped = true
	w.mu.Unlock()

	w.exitErr = w.cmd.Wait()
	close(w.exited)
	if n, ok := pipeUnread(w.stdin); ok {
		w.mu.Lock()
		w.unreadAtExit, w.unreadKnown = n, true
		w.mu.Unlock()
	}
	w.stdin.Close() // unblocks a writer stuck on a pipe a descendant still holds

	timer := time.NewTimer(pipeDrainGrace)
	defer timer.Stop()
	for _, ch := range []chan struct{}{w.stdoutDone, w.stderrDone} {
		select {
		case <-ch:
		case <-timer.C:
			w.log.Warn("pipes still open after exit; closing them")
			w.stdout.Close()
			w.stderr.Close()
			<-ch
		}
	}
	<-w.stdoutDone
	<-w.stderrDone

	w.fail(ErrDead, exitCause(w.exitErr))
	w.log.Debug("worker exited", zap.NamedError("exit", w.exitErr))
}

var errCleanExit = errors.New("exit status 0")

func exitCause(exitErr error) error {
	if exitErr == nil {
		return errCleanExit
	}
	return exitErr
}

// fail records the first failure, marks the worker broken and kills its
// process group. It returns the recorded failure, which may be an earlier
// one than the caller's.
func (w *Worker) fail(reason, cause error) *Error {
	w.mu.Lock()
	e := w.failErr
	first := e == nil
	if first {
		if reason == ErrDead && w.stopping {
			reason = ErrStopped
		}
		e = &Error{WorkerID: w.id, PID: w.pid, Reason: reason, Err: cause}
		w.failErr = e
		close(w.broken)
		if !w.reaped {
			_ = signalGroup(w.pid, syscall.SIGKILL)
		}
	}
	w.mu.Unlock()
	if first {
		if reason == ErrStopped {
			w.log.Debug("worker stopped", zap.NamedError("cause", cause))
		} else {
			w.log.Warn("worker failed", zap.Error(e))
		}
	}
	return e
}

// failure returns the recorded failure, or nil.
func (w *Worker) failure() *Error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failErr
}

// signalCancel sends the cancel signal (protocol.FeatureCancelSignal) to
// the process, not its group, if it is the one the ready frame named and it
// has not been reaped.
func (w *Worker) signalCancel() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reaped || w.readyPID != w.pid {
		return
	}
	if err := cancelSignal(w.pid); err != nil {
		w.log.Warn("cancel signal", zap.Error(err))
	}
}

// signal sends sig to the group unless the leader has been reaped.
func (w *Worker) signal(sig syscall.Signal) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.reaped {
		if err := signalGroup(w.pid, sig); err != nil {
			w.log.Warn("signal process group", zap.Stringer("signal", sig), zap.Error(err))
		}
	}
}

// Stop stops the worker gracefully: a shutdown frame and EOF on stdin, then
// SIGTERM to the process group, then SIGKILL, each step waiting StopGrace
// for the process to exit. When ctx ends first it goes straight to SIGKILL.
// It returns once the process is reaped and Done is closed: nil, or
// ctx.Err() if ctx cut the sequence short. Stop is idempotent and safe to
// call concurrently; a call that did not run the sequence waits for it.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()

	first := false
	w.stopOnce.Do(func() { first = true })
	if !first {
		select {
		case <-w.done:
			return nil
		case <-ctx.Done():
			w.Kill()
			return ctx.Err()
		}
	}

	grace := w.cfg.StopGrace
	// Step 1: ask politely. A writer blocked on a full stdin holds wlock;
	// then skip the frame and go straight to closing stdin.
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case w.wlock <- struct{}{}:
		if w.failure() == nil {
			// The frame is tiny, but a worker that stopped reading with
			// a full stdin pipe would block it: bound it by the grace.
			_ = w.stdin.SetWriteDeadline(time.Now().Add(grace))
			w.out = protocol.Message{Type: protocol.TypeShutdown}
			_ = w.writeLocked(&w.out)
		}
		w.stdin.Close()
		<-w.wlock
	case <-w.done:
		return nil
	case <-t.C:
		w.stdin.Close()
	case <-ctx.Done():
		w.Kill()
		return ctx.Err()
	}
	if ok, err := w.waitDone(ctx, t, grace); ok {
		return err
	}

	// Step 2: SIGTERM the whole group.
	w.log.Debug("worker ignored shutdown; sending SIGTERM")
	w.signal(syscall.SIGTERM)
	if ok, err := w.waitDone(ctx, t, grace); ok {
		return err
	}

	// Step 3: no more asking.
	w.log.Warn("worker ignored SIGTERM; sending SIGKILL")
	w.Kill()
	return nil
}

// waitDone waits up to grace for Done. It reports whether Stop is finished,
// with the error Stop should return.
func (w *Worker) waitDone(ctx context.Context, t *time.Timer, grace time.Duration) (bool, error) {
	t.Reset(grace)
	select {
	case <-w.done:
		return true, nil
	case <-t.C:
		return false, nil
	case <-ctx.Done():
		w.Kill()
		return true, ctx.Err()
	}
}

// Kill SIGKILLs the process group now and returns once the process is
// reaped and Done is closed. It is idempotent. A call in progress fails
// with ErrStopped.
func (w *Worker) Kill() {
	w.mu.Lock()
	w.stopping = true
	w.mu.Unlock()
	w.fail(ErrStopped, nil)
	<-w.done
}

// Done is closed when the process has exited and been reaped and all of the
// worker's goroutines have ended.
func (w *Worker) Done() <-chan struct{} { return w.done }

// ExitErr reports why the process ended: nil for a clean exit with status
// 0, else the *exec.ExitError or wait error. It is meaningful only after
// Done is closed; before that it returns nil.
func (w *Worker) ExitErr() error {
	select {
	case <-w.exited:
		return w.exitErr
	default:
		return nil
	}
}

// ID returns the worker id from Config.ID.
func (w *Worker) ID() string { return w.id }

// PID returns the process id, which is also the process group id.
func (w *Worker) PID() int { return w.pid }

// Commands returns the commands the worker announced in its ready frame.
func (w *Worker) Commands() []string { return append([]string(nil), w.commands...) }

// Features returns the features the worker announced in its ready frame
// (e.g. "cancel").
func (w *Worker) Features() []string { return append([]string(nil), w.features...) }

// HasFeature reports whether the worker's ready frame listed feature.
func (w *Worker) HasFeature(feature string) bool {
	for _, f := range w.features {
		if f == feature {
			return true
		}
	}
	return false
}

// StartedAt returns when the process was spawned.
func (w *Worker) StartedAt() time.Time { return w.startedAt }

// RSS returns the process's resident set size in bytes, from VmRSS in
// /proc/<pid>/status. Descendants are not counted.
func (w *Worker) RSS() (int64, error) {
	// Hold mu so the pid cannot be reaped, and reused, while we read.
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.reaped {
		return 0, &Error{WorkerID: w.id, PID: w.pid, Reason: ErrDead, Err: errors.New("process has exited")}
	}
	n, err := readRSS(w.pid)
	if err != nil {
		return 0, &Error{WorkerID: w.id, PID: w.pid, Reason: ErrDead, Err: err}
	}
	return n, nil
}
