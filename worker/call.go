package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/internal/jsonappend"
	"github.com/procfleet/procfleet/worker/protocol"
)

// Call is one job to run on a worker.
type Call struct {
	// Command names what the worker should run; see its ready frame.
	Command string
	// Session is the session the job belongs to; "" for none.
	Session string
	// NewSession tells the worker this is the session's first job here, so
	// it holds no state for it yet.
	NewSession bool
	// JobID and Attempt identify the job, for the worker's logs.
	JobID   string
	Attempt int
	// Deadline, when set, bounds the call like a ctx deadline and is sent to
	// the worker as deadline_ms (Unix milliseconds). The earlier of Deadline
	// and ctx's deadline is the one sent and enforced.
	Deadline time.Time
	// Payload is sent as is; nil is sent as JSON null.
	Payload json.RawMessage
	// OnProgress, if set, receives the data of each progress frame. It runs
	// on the worker's reader goroutine, so it must not block for long: no
	// other frame is read meanwhile. It is never called after Call returns
	// nil; after an error one invocation may still be finishing.
	OnProgress func(data json.RawMessage)
	// Cancel, when set and closed while the call runs, asks the worker to
	// stop it: a worker that listed the "cancel" feature in its ready frame
	// is sent {"type":"cancel","id":N}; any worker then has CancelGrace to
	// answer the call. Its answer is returned as usual, with
	// Result.CancelSent set. A worker that has not answered by then is
	// killed, and Call fails with ErrCanceled.
	Cancel <-chan struct{}
	// CancelGrace is how long a canceled call may take to answer; default
	// DefaultCancelGrace.
	CancelGrace time.Duration
}

// cancelResignal is how often a canceled call's worker is signaled again
// while it has not answered (see protocol.FeatureCancelSignal).
const cancelResignal = 50 * time.Millisecond

// DefaultCancelGrace is Call.CancelGrace's default.
const DefaultCancelGrace = 2 * time.Second

// Result is a worker's answer to a call.
type Result struct {
	OK    bool
	Value json.RawMessage     // the result when OK
	Error *protocol.ErrorInfo // the application error when !OK; the worker stays usable
	// Canceled reports that Call.Cancel was closed before the answer came:
	// the answer may be the worker's reaction to it.
	Canceled bool
}

var jsonNull = json.RawMessage("null")

// Call runs one call and waits for its result. Calls on one worker run one
// at a time: a second Call waits for the first, honouring its ctx.
//
// A nil error means the worker answered (OK or with an application error)
// and is still usable. A non-nil error is always an *Error and means the
// worker is unusable and its process group has been killed; that includes
// ctx expiry (ErrTimeout for a deadline, ErrCanceled for a cancellation),
// even while waiting for another call, so that no stale reply can ever
// reach a later caller.
func (w *Worker) Call(ctx context.Context, c *Call) (Result, error) {
	if !c.Deadline.IsZero() {
		if d, ok := ctx.Deadline(); !ok || c.Deadline.Before(d) {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, c.Deadline)
			defer cancel()
		}
	}
	if err := w.acquire(ctx); err != nil {
		// A worker found dead here never saw the call.
		return Result{}, w.unreadCall(err, w.written.Load())
	}
	defer w.release()

	id := w.begin(protocol.TypeResult, c.OnProgress)
	var deadlineMS int64
	if d, ok := ctx.Deadline(); ok {
		deadlineMS = d.UnixMilli()
	}
	payload := c.Payload
	if payload == nil {
		payload = jsonNull
	}
	start := w.written.Load()
	err := w.send(ctx, id, func(m *protocol.Message) {
		*m = protocol.Message{
			Type:       protocol.TypeCall,
			ID:         id,
			Command:    c.Command,
			Session:    c.Session,
			NewSession: c.NewSession,
			JobID:      c.JobID,
			Attempt:    c.Attempt,
			DeadlineMS: deadlineMS,
			Payload:    payload,
		}
	})
	if err != nil {
		w.end()
		return Result{}, w.unreadCall(err, start)
	}
	r, canceled, err := w.awaitCall(ctx, id, c)
	if err != nil {
		return Result{}, w.unreadCall(err, start)
	}
	return Result{OK: r.ok, Value: r.value, Error: r.err, Canceled: canceled}, nil
}

// awaitCall is await for a call, which c.Cancel may cancel: see Call.Cancel.
func (w *Worker) awaitCall(ctx context.Context, id uint64, c *Call) (reply, bool, error) {
	if c.Cancel == nil {
		r, err := w.await(ctx)
		return r, false, err
	}
	select {
	case r := <-w.replies:
		return r, false, nil
	case <-w.broken:
		r, err := w.await(ctx)
		return r, false, err
	case <-ctx.Done():
		r, err := w.await(ctx)
		return r, false, err
	case <-c.Cancel:
	}
	grace := c.CancelGrace
	if grace <= 0 {
		grace = DefaultCancelGrace
	}
	var resignal <-chan time.Time
	if w.HasFeature(protocol.FeatureCancel) {
		if err := w.sendCancel(id, grace); err != nil {
			r, err := w.await(ctx)
			return r, true, err
		}
		// A worker that asked for the cancel signal gets it now, and
		// again every cancelResignal until it answers: a signal that lands
		// just before the worker enters a blocking call does not
		// interrupt it.
		if w.HasFeature(protocol.FeatureCancelSignal) {
			w.signalCancel()
			tick := time.NewTicker(cancelResignal)
			defer tick.Stop()
			resignal = tick.C
		}
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case r := <-w.replies:
			return r, true, nil
		case <-resignal:
			w.signalCancel()
		case <-t.C:
			select {
			case r := <-w.replies:
				return r, true, nil
			default:
			}
			w.end()
			return reply{}, true, w.fail(ErrCanceled, fmt.Errorf("did not answer a cancel within %v", grace))
		case <-w.broken:
			waiting = false
		case <-ctx.Done():
			waiting = false
		}
	}
	r, err := w.await(ctx)
	return r, true, err
}

// sendCancel writes a cancel frame for call id. A worker that does not read
// it within grace is stuck: the write fails and the worker is killed.
func (w *Worker) sendCancel(id uint64, grace time.Duration) error {
	select {
	case w.wlock <- struct{}{}:
	case <-w.broken:
		return w.failure()
	}
	_ = w.stdin.SetWriteDeadline(time.Now().Add(grace))
	w.out = protocol.Message{Type: protocol.TypeCancel, ID: id}
	err := w.writeLocked(&w.out)
	_ = w.stdin.SetWriteDeadline(time.Time{})
	w.out = protocol.Message{}
	<-w.wlock
	if err != nil {
		return w.writeFailed(err, nil)
	}
	return nil
}

// Ping sends a ping and waits for the pong. A failure is an *Error and, as
// with Call, means the worker has been killed.
func (w *Worker) Ping(ctx context.Context) error {
	if err := w.acquire(ctx); err != nil {
		return err
	}
	defer w.release()

	id := w.begin(protocol.TypePong, nil)
	if err := w.send(ctx, id, func(m *protocol.Message) {
		*m = protocol.Message{Type: protocol.TypePing, ID: id}
	}); err != nil {
		w.end()
		return err
	}
	_, err := w.await(ctx)
	return err
}

// SessionEnd tells the worker it may drop the state of session. No reply is
// expected. It fails with an *Error if the worker is already unusable; if
// the write itself fails the worker is killed. It may be sent while a call
// runs, but a worker that reads its frames on its main thread (one that
// lists protocol.FeatureCancelSignal, as the Python SDK does under an
// agent) reads it only once the call is answered: frames beyond the pipe's
// buffer (64 KiB on Linux) sent meanwhile block, and fail after StopGrace
// (the worker is then killed). The pool ends sessions on idle workers only.
func (w *Worker) SessionEnd(session string) error {
	if err := w.usable(); err != nil {
		return err
	}
	select {
	case w.wlock <- struct{}{}:
	case <-w.broken:
		return w.failure()
	}
	// A worker that has not read its stdin for StopGrace while
	// session_end frames fill the pipe is stuck.
	_ = w.stdin.SetWriteDeadline(time.Now().Add(w.cfg.StopGrace))
	w.out = protocol.Message{Type: protocol.TypeSessionEnd, Session: session}
	err := w.writeLocked(&w.out)
	_ = w.stdin.SetWriteDeadline(time.Time{})
	w.out = protocol.Message{}
	<-w.wlock
	if err != nil {
		return w.writeFailed(err, nil)
	}
	return nil
}

// Validate reports whether the worker can take a call: nil if its process is
// alive, its pipes are open, it is ready and it has not failed; otherwise
// the *Error explaining why not (ErrDead, ErrProtocol, ErrTimeout,
// ErrCanceled or ErrStopped). It does not block and never talks to the
// worker; use Ping for that.
func (w *Worker) Validate() error {
	if err := w.usable(); err != nil {
		return err
	}
	// The process may have died a moment ago, before the reader or the
	// waiter noticed: ask the kernel directly. mu keeps the pid from being
	// reaped (and reused) during the check.
	w.mu.Lock()
	dead := w.reaped || hasExited(w.pid)
	w.mu.Unlock()
	if dead {
		return w.fail(ErrDead, errors.New("process has exited"))
	}
	return nil
}

// usable returns the error that makes the worker unusable, or nil.
func (w *Worker) usable() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failErr != nil {
		return w.failErr
	}
	if w.stopping {
		return &Error{WorkerID: w.id, PID: w.pid, Reason: ErrStopped}
	}
	return nil
}

// acquire takes the call slot. Giving up on it because ctx ended still
// kills the worker: the caller is told "err means dead", and keeping that
// rule absolute is what lets the pool act on it blindly.
func (w *Worker) acquire(ctx context.Context) error {
	select {
	case w.slot <- struct{}{}:
	default:
		select {
		case w.slot <- struct{}{}:
		case <-w.broken:
			return w.failure()
		case <-ctx.Done():
			return w.fail(ctxReason(ctx), ctx.Err())
		}
	}
	if err := w.usable(); err != nil {
		<-w.slot
		return err
	}
	return nil
}

func (w *Worker) release() { <-w.slot }

// begin registers the pending request and returns its id.
func (w *Worker) begin(replyType string, onProgress func(json.RawMessage)) uint64 {
	w.nextID++
	id := w.nextID
	w.pmu.Lock()
	w.pendingID, w.pendingFor, w.onProgress = id, replyType, onProgress
	w.lastID = id
	w.pmu.Unlock()
	return id
}

// end forgets the pending request, so that a late result for it is a
// protocol error, a late progress frame is dropped, and no progress
// callback starts after Call returns.
func (w *Worker) end() {
	w.pmu.Lock()
	w.pendingID, w.pendingFor, w.onProgress = 0, "", nil
	w.pmu.Unlock()
}

// send writes one request frame built by fill. The write can block on a
// full pipe, so a cancellable ctx gets a hook that kills the worker, which
// breaks the pipe and unblocks the write.
func (w *Worker) send(ctx context.Context, id uint64, fill func(*protocol.Message)) error {
	if ctx.Done() != nil {
		if err := ctx.Err(); err != nil {
			return w.fail(ctxReason(ctx), err)
		}
		hooked := make(chan struct{})
		stop := context.AfterFunc(ctx, func() {
			defer close(hooked)
			w.pmu.Lock()
			mine := w.pendingID == id
			w.pmu.Unlock()
			if mine {
				w.fail(ctxReason(ctx), ctx.Err())
			}
		})
		// The hook is send's own: if ctx ended and it started, wait for it,
		// so that it never runs (and logs) after the call returned.
		defer func() {
			if !stop() {
				<-hooked
			}
		}()
	}
	select {
	case w.wlock <- struct{}{}:
	case <-w.broken:
		return w.failure()
	}
	fill(&w.out)
	err := w.writeLocked(&w.out)
	w.out = protocol.Message{} // do not pin the payload
	<-w.wlock
	if err != nil {
		return w.writeFailed(err, ctx)
	}
	return nil
}

// writeLocked encodes m and writes it as one frame. wlock must be held.
func (w *Worker) writeLocked(m *protocol.Message) error {
	w.encBuf.Reset()
	var b []byte
	ok := false
	if m.Type == protocol.TypeCall {
		// The hot path: a call frame is appended by hand, its payload
		// copied as it is instead of being re-encoded through reflection.
		w.encBuf.Grow(len(m.Payload) + len(m.Command) + len(m.Session) + len(m.JobID) + 128)
		b, ok = appendCall(w.encBuf.AvailableBuffer(), m)
	}
	if !ok {
		if err := w.enc.Encode(m); err != nil {
			return &encodeError{err}
		}
		b = w.encBuf.Bytes()
		b = b[:len(b)-1] // Encode's trailing newline
	}
	if err := w.fw.WriteFrame(b); err != nil {
		var fse *protocol.FrameSizeError
		if errors.As(err, &fse) {
			return &encodeError{err}
		}
		return err
	}
	if w.encBuf.Cap() > 1<<20 {
		w.encBuf = bytes.Buffer{} // enc writes through &w.encBuf, which stays valid
	}
	return nil
}

// writeFailed turns a failed write into the worker's failure.
func (w *Worker) writeFailed(err error, ctx context.Context) error {
	var ee *encodeError
	if errors.As(err, &ee) {
		// The request itself is bad (invalid payload JSON or over
		// MaxFrame). Nothing reached the worker, but by contract an error
		// from Call means the worker is gone.
		return w.fail(ErrProtocol, ee.err)
	}
	if ctx != nil && ctx.Err() != nil {
		return w.fail(ctxReason(ctx), ctx.Err())
	}
	// EPIPE, a closed stdin, or a stuck pipe: the process is gone or going.
	return w.fail(ErrDead, fmt.Errorf("write to stdin: %w", err))
}

type encodeError struct{ err error }

func (e *encodeError) Error() string { return "encode request: " + e.err.Error() }
func (e *encodeError) Unwrap() error { return e.err }

// await waits for the reply to the pending request.
func (w *Worker) await(ctx context.Context) (reply, error) {
	select {
	case r := <-w.replies:
		return r, nil
	case <-w.broken:
		// A reply that made it out before the failure still counts.
		select {
		case r := <-w.replies:
			return r, nil
		default:
		}
		w.end()
		return reply{}, w.failure()
	case <-ctx.Done():
		select {
		case r := <-w.replies:
			return r, nil
		default:
		}
		w.end()
		return reply{}, w.fail(ctxReason(ctx), ctx.Err())
	}
}

func ctxReason(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrTimeout
	}
	return ErrCanceled
}

// appendCall appends m, a call, as the JSON object the encoder would
// write (the payload copied verbatim, not compacted). It reports false,
// leaving the job to the encoder, when m holds anything the fast path does
// not write: a field a call does not use, a string that needs escaping, or
// a payload that is not valid JSON (the encoder then reports it).
func appendCall(b []byte, m *protocol.Message) ([]byte, bool) {
	if m.Protocol != 0 || m.PID != 0 || m.Commands != nil || m.Features != nil || m.OK != nil || m.Result != nil || m.Error != nil || m.Data != nil {
		return nil, false
	}
	o := jsonappend.Start(b, `{"type":"call"`)
	o.Uint(`,"id":`, m.ID)
	o.String(`,"command":`, m.Command, true)
	o.String(`,"session":`, m.Session, true)
	o.Bool(`,"new_session":`, m.NewSession, true)
	o.String(`,"job_id":`, m.JobID, true)
	o.Int(`,"attempt":`, int64(m.Attempt))
	o.Int(`,"deadline_ms":`, m.DeadlineMS)
	o.Raw(`,"payload":`, m.Payload)
	return o.End()
}

// unreadCall returns err, the failure of a call whose frame began at byte
// start of the stdin stream, marked ErrUnread when the process died without
// reading any of the frame: every byte from start on is still in the pipe
// (or was never written). Only an ErrDead failure is looked at; where the
// pipe cannot be read (not Linux, or stdin closed with nothing recorded)
// err stays as it is, and the call counts as having reached the worker.
func (w *Worker) unreadCall(err error, start int64) error {
	var e *Error
	if !errors.As(err, &e) || e.Reason != ErrDead {
		return err
	}
	n, ok := pipeUnread(w.stdin)
	if !ok {
		w.mu.Lock()
		n, ok = w.unreadAtExit, w.unreadKnown
		w.mu.Unlock()
	}
	if !ok || w.written.Load()-int64(n) > start {
		return err
	}
	cause := ErrUnread
	if e.Err != nil {
		cause = fmt.Errorf("%w: %w", ErrUnread, e.Err)
	}
	return &Error{WorkerID: e.WorkerID, PID: e.PID, Reason: e.Reason, Err: cause}
}

// countingWriter counts the bytes written through it, a partial write's
// included, so that unreadCall knows where each frame began on the pipe.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
