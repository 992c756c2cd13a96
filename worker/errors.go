package worker

import (
	"errors"
	"strconv"
	"strings"
)

// Reasons a worker operation fails. Every error the package returns is an
// *Error whose Reason is one of these; match them with errors.Is.
var (
	// ErrStartup means Start failed: the process could not be spawned, exited
	// or misbehaved before its ready frame, or the ready frame was late.
	ErrStartup = errors.New("worker: startup failed")
	// ErrDead means the process has gone: it exited, its stdout hit EOF or
	// was closed, or its stdin reported a broken pipe.
	ErrDead = errors.New("worker: process is dead")
	// ErrProtocol means the worker broke protocol v1: a garbage, oversized or
	// empty frame, a reply with an unknown id, or an unexpected message.
	ErrProtocol = errors.New("worker: protocol error")
	// ErrTimeout means a call's context deadline (or Call.Deadline) passed.
	ErrTimeout = errors.New("worker: call timed out")
	// ErrCanceled means a call's context was canceled.
	ErrCanceled = errors.New("worker: call canceled")
	// ErrStopped means Stop or Kill was called.
	ErrStopped = errors.New("worker: stopped")
	// ErrInvalidConfig is wrapped by the error Start returns for a bad
	// Config (as the cause of an ErrStartup *Error); it names the field.
	ErrInvalidConfig = errors.New("worker: invalid config")
	// ErrUnsupported means this platform cannot run workers: the package
	// needs Linux (parent-death signal, waitid without reaping, /proc). It
	// is the cause (Err) of Start's ErrStartup elsewhere, so that the rest
	// of procfleet still builds and can be developed on macOS.
	ErrUnsupported = errors.New("worker: subprocess workers need Linux")
	// ErrStdoutClosed is the cause (Err, under ErrDead) when the worker
	// closed its stdout but kept running, so the worker package killed it:
	// the kill was the worker's fault, not an outside one.
	ErrStdoutClosed = errors.New("stdout closed while the process kept running")
	// ErrUnread is in the cause (Err, under ErrDead) of a call that failed
	// because the process died or was killed before it read any byte of
	// the call's frame (Linux: the frame was still in the stdin pipe, or
	// could not be written for want of a reader). The job never reached
	// the worker, so the death was not the job's doing.
	ErrUnread = errors.New("the worker died before reading the call")
)

// Error is the error type every failing worker operation returns.
type Error struct {
	WorkerID string
	PID      int
	Reason   error // one of the Err* sentinels of this package
	Err      error // the cause; may be nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("worker ")
	b.WriteString(e.WorkerID)
	if e.PID > 0 {
		b.WriteString(" (pid ")
		b.WriteString(strconv.Itoa(e.PID))
		b.WriteString(")")
	}
	b.WriteString(": ")
	if e.Reason != nil {
		b.WriteString(strings.TrimPrefix(e.Reason.Error(), "worker: "))
	} else {
		b.WriteString("error")
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Is reports whether target is e's Reason, so that errors.Is(err, ErrDead)
// works without unwrapping to the cause.
func (e *Error) Is(target error) bool { return e.Reason != nil && target == e.Reason }

// Unwrap returns the cause, so that errors.Is(err, context.DeadlineExceeded)
// or errors.As(err, &exitErr) see through the worker error.
func (e *Error) Unwrap() error { return e.Err }
