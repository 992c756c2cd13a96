package worker

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/worker/protocol"
)

// readStdout performs the handshake and then dispatches every frame until
// stdout ends or the worker breaks protocol.
func (w *Worker) readStdout() {
	defer close(w.stdoutDone)
	defer w.stdout.Close()

	r := protocol.NewReader(w.stdout, w.cfg.MaxFrame)
	var m protocol.Message
	if err := r.Read(&m); err != nil {
		w.readFailed(textBeforeReady(err))
		return
	}
	if err := checkReady(&m); err != nil {
		w.fail(ErrProtocol, err)
		return
	}
	w.commands = m.Commands
	w.features = m.Features
	w.readyPID = m.PID
	close(w.ready)

	for {
		if err := r.Read(&m); err != nil {
			w.readFailed(err)
			return
		}
		if err := w.dispatch(&m); err != nil {
			w.fail(ErrProtocol, err)
			return
		}
	}
}

func checkReady(m *protocol.Message) error {
	if m.Type != protocol.TypeReady {
		return fmt.Errorf("%w: first frame is %q, want %q", protocol.ErrProtocol, m.Type, protocol.TypeReady)
	}
	if m.Protocol != protocol.Version {
		return fmt.Errorf("%w: worker speaks protocol %d, want %d", protocol.ErrProtocol, m.Protocol, protocol.Version)
	}
	return nil
}

// textBeforeReady explains the commonest way to break the protocol: a
// worker that prints to stdout before its ready frame. Its first four bytes
// of text read as an absurd frame length; when they are printable, say so.
func textBeforeReady(err error) error {
	var fse *protocol.FrameSizeError
	if !errors.As(err, &fse) || fse.Size <= 0 || fse.Size > math.MaxUint32 {
		return err
	}
	hdr := binary.BigEndian.AppendUint32(nil, uint32(fse.Size))
	for _, b := range hdr {
		if b < 0x20 || b > 0x7e {
			return err
		}
	}
	return fmt.Errorf("%w (stdout starts with the text %q: the worker printed to stdout before its ready frame)", err, hdr)
}

// readFailed classifies a read error: a framing or decoding violation is a
// protocol error; anything else (EOF, a truncated frame, a closed pipe)
// means the process is gone or has closed its stdout.
func (w *Worker) readFailed(err error) {
	if errors.Is(err, protocol.ErrProtocol) {
		w.fail(ErrProtocol, err)
		return
	}
	// Make sure the process is gone, then report how it ended. During Stop
	// the process is exiting on its own and Stop escalates if it does not,
	// so let it finish its shutdown undisturbed.
	w.mu.Lock()
	stopping := w.stopping
	w.mu.Unlock()
	keptRunning := false
	if !stopping {
		// A process whose stdout ends because it is exiting is gone in a
		// moment; one still there closed its stdout and will never answer.
		// Telling the two apart makes the error say what happened.
		t := time.NewTimer(stdoutClosedGrace)
		select {
		case <-w.exited:
		case <-t.C:
			keptRunning = true
			w.signal(syscall.SIGKILL)
		}
		t.Stop()
	}
	<-w.exited
	cause := exitCause(w.exitErr)
	if keptRunning {
		cause = fmt.Errorf("%w, so it was killed: %w", ErrStdoutClosed, cause)
	}
	w.fail(ErrDead, cause)
}

// stdoutClosedGrace is how long a worker whose stdout ended may take to
// exit on its own before it is killed.
const stdoutClosedGrace = 200 * time.Millisecond

// dispatch hands one frame to the pending call. Any frame that does not
// belong to it is a protocol error, except a progress frame for a request
// that has ended: see dropStale.
func (w *Worker) dispatch(m *protocol.Message) error {
	switch m.Type {
	case protocol.TypeResult, protocol.TypePong:
		w.pmu.Lock()
		if m.ID == 0 || m.ID != w.pendingID || m.Type != w.pendingFor {
			id, want := w.pendingID, w.pendingFor
			w.pmu.Unlock()
			if id == 0 {
				return fmt.Errorf("%w: unexpected %s frame with id %d: no call pending", protocol.ErrProtocol, m.Type, m.ID)
			}
			return fmt.Errorf("%w: unexpected %s frame with id %d: waiting for %s %d", protocol.ErrProtocol, m.Type, m.ID, want, id)
		}
		if m.Type == protocol.TypeResult && m.OK == nil {
			w.pmu.Unlock()
			return fmt.Errorf("%w: result frame %d has no ok field", protocol.ErrProtocol, m.ID)
		}
		w.pendingID, w.pendingFor, w.onProgress = 0, "", nil
		w.pmu.Unlock()

		r := reply{ok: m.Succeeded(), value: m.Result, err: m.Error}
		if m.Type == protocol.TypeResult && !r.ok && r.err == nil {
			r.err = &protocol.ErrorInfo{Message: "worker reported failure without an error"}
		}
		w.replies <- r
		return nil

	case protocol.TypeProgress:
		w.pmu.Lock()
		if m.ID == 0 || m.ID != w.pendingID || w.pendingFor != protocol.TypeResult {
			id, last := w.pendingID, w.lastID
			w.pmu.Unlock()
			if m.ID != 0 && m.ID != id && m.ID <= last {
				w.dropStale(m.ID, id)
				return nil
			}
			return fmt.Errorf("%w: progress frame with id %d while waiting for %d", protocol.ErrProtocol, m.ID, id)
		}
		fn := w.onProgress
		w.pmu.Unlock()
		if fn != nil {
			fn(m.Data)
		}
		return nil

	default:
		return fmt.Errorf("%w: unexpected %q frame", protocol.ErrProtocol, m.Type)
	}
}

// dropStale drops a progress frame for a request that has ended: ids only
// grow, so one at most the newest id sent and not the pending one is an
// earlier request's. A worker's thread that outlived its call (the Python
// SDK's progress() from a handler's thread) sends such frames after the
// call's result, and they reach the reader while the next call waits.
// Failing that call would blame, and kill the worker under, an innocent job
// (the agent's poison guard counts it), so the frame is dropped instead; a
// second result for an ended call stays a protocol error. Such a thread may
// report thousands of times: one line per ended call, with the running
// count.
func (w *Worker) dropStale(id, pending uint64) {
	w.staleDropped++
	if id <= w.staleLogged {
		return
	}
	w.staleLogged = id
	w.log.Warn("dropped progress frames for an ended request (a thread of the worker that outlived its call?)",
		zap.Uint64("id", id), zap.Uint64("pending", pending), zap.Uint64("dropped", w.staleDropped))
}

// readStderr forwards the worker's stderr to the logger, one entry per line.
func (w *Worker) readStderr() {
	defer close(w.stderrDone)
	defer w.stderr.Close()

	br := bufio.NewReaderSize(w.stderr, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		// A line longer than the buffer is logged in pieces rather than
		// dropped, and the pipe keeps draining so the worker never blocks
		// on a full stderr.
		if line = bytes.TrimRight(line, "\r\n"); len(line) > 0 {
			if ce := w.log.Check(zap.InfoLevel, string(line)); ce != nil {
				ce.Write(zap.String("stream", "stderr"))
			}
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}
