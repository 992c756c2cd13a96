package testworker

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/procfleet/procfleet/internal/execlog"
	"github.com/procfleet/procfleet/worker/protocol"
)

// Commands lists what the helper worker answers to, as announced in its
// ready frame:
//
//   - echo: the result is the payload.
//   - pid: {"pid": pid}.
//   - env: the worker's environment, as a list of KEY=VALUE strings.
//   - session: {"pid", "session", "new_session", "count", "seq"}, where count
//     is the number of jobs of this session this process has seen (from 1)
//     and seq is the payload. State lives until session_end.
//   - sessions: {"pid", "live": sorted live session ids, "ended": ids
//     ended by session_end, in order}.
//   - fail: application error ValueError "boom", not retryable.
//   - retry: application error TransientError "try again", retryable.
//   - crash: exit status 3 without replying. exit0: exit status 0 without
//     replying. hang: never reply.
//   - sleep: payload {"ms": N}: sleep N ms with a progress {"pct": 50}
//     halfway, then {"slept": N}.
//   - garbage: a frame whose body is not JSON. oversized: a length prefix of
//     1<<30 and a few bytes. zero: a zero-length frame. half: a header
//     announcing 100 bytes, 10 bytes, then exit status 1. badid: a result
//     with the call id plus 1000.
//   - grow: payload {"mb": N}: allocate, touch and keep N MiB, then
//     {"rss_mb": VmRSS in MiB}.
//   - close_stdout: close stdout and keep running until EOF on stdin.
//   - log: write the payload (a JSON string) as one line to stderr, then
//     reply {"logged": true}.
//   - spawn: start a grandchild in the worker's process group that sleeps
//     forever, and reply {"pid": its pid}.
//   - late_progress: reply {}, then, when the next frame arrives and before
//     handling it, send three progress frames {"late": true} for this call,
//     as a thread of a handler that outlived its call does.
//   - late_result: reply {}, then, likewise, a second result for this call.
//
// Any other command fails with application error UnknownCommand.
var Commands = []string{
	"echo", "pid", "env", "session", "sessions", "fail", "retry", "crash", "exit0",
	"hang", "sleep", "garbage", "oversized", "zero", "half", "badid", "grow",
	"close_stdout", "log", "spawn", "late_progress", "late_result",
}

type helper struct {
	pid        int
	out        *protocol.Writer
	ignoreTerm bool
	counts     map[string]int
	ended      []string
	hoard      [][]byte            // memory kept alive by grow
	late       []*protocol.Message // sent when the next frame arrives
	execLog    *os.File
}

// Main runs the helper worker on stdin and stdout and exits the process. It
// never returns.
func Main() {
	h := &helper{
		pid:        os.Getpid(),
		out:        protocol.NewWriter(os.Stdout, 0),
		ignoreTerm: envBool(EnvIgnoreTerm),
		counts:     map[string]int{},
	}
	if h.ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
	}
	if path := os.Getenv(EnvExecLog); path != "" {
		f, err := execlog.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testworker: exec log:", err)
			os.Exit(1)
		}
		h.execLog = f
	}
	if d, err := time.ParseDuration(os.Getenv(EnvStartDelay)); err == nil && d > 0 {
		time.Sleep(d)
	}
	switch os.Getenv(EnvStart) {
	case modeCrash:
		fmt.Fprintln(os.Stderr, "testworker: crashing before ready")
		os.Exit(1)
	case modeNeverReady:
		sleepForever()
	case modeGarbage:
		os.Stdout.WriteString("this is not a frame\n")
	case modeCloseStdout:
		os.Stdout.Close()
		h.drainStdin()
	}
	h.send(&protocol.Message{Type: protocol.TypeReady, Protocol: protocol.Version, PID: h.pid, Commands: Commands})
	if os.Getenv(EnvStart) == modeReadyExit {
		os.Exit(1)
	}
	h.serve()
}

func (h *helper) serve() {
	in := protocol.NewReader(os.Stdin, 0)
	var m protocol.Message
	for {
		if err := in.Read(&m); err != nil {
			if h.ignoreTerm {
				sleepForever()
			}
			os.Exit(0)
		}
		for _, l := range h.late {
			h.send(l)
		}
		h.late = nil
		switch m.Type {
		case protocol.TypeCall:
			h.call(&m)
		case protocol.TypePing:
			h.send(&protocol.Message{Type: protocol.TypePong, ID: m.ID})
		case protocol.TypeSessionEnd:
			if _, ok := h.counts[m.Session]; ok {
				delete(h.counts, m.Session)
				h.ended = append(h.ended, m.Session)
			}
		case protocol.TypeShutdown:
			if !h.ignoreTerm {
				os.Exit(0)
			}
		default:
			fmt.Fprintf(os.Stderr, "testworker: unexpected %q frame\n", m.Type)
			os.Exit(2)
		}
	}
}

func (h *helper) call(m *protocol.Message) {
	if h.execLog != nil {
		_ = execlog.Write(h.execLog, m.JobID, m.Attempt, h.pid, m.Session)
	}
	switch m.Command {
	case "echo":
		h.ok(m.ID, m.Payload)
	case "pid":
		h.ok(m.ID, map[string]int{"pid": h.pid})
	case "env":
		h.ok(m.ID, os.Environ())
	case "session":
		h.counts[m.Session]++
		h.ok(m.ID, map[string]any{
			"pid": h.pid, "session": m.Session, "new_session": m.NewSession,
			"count": h.counts[m.Session], "seq": m.Payload,
		})
	case "sessions":
		live := make([]string, 0, len(h.counts))
		for s := range h.counts {
			live = append(live, s)
		}
		slices.Sort(live)
		h.ok(m.ID, map[string]any{"pid": h.pid, "live": live, "ended": append([]string{}, h.ended...)})
	case "fail":
		h.fail(m.ID, &protocol.ErrorInfo{Type: "ValueError", Message: "boom"})
	case "retry":
		h.fail(m.ID, &protocol.ErrorInfo{Type: "TransientError", Message: "try again", Retryable: true})
	case "crash":
		os.Exit(3)
	case "exit0":
		os.Exit(0)
	case "hang":
		sleepForever()
	case "sleep":
		var p struct{ MS int }
		_ = json.Unmarshal(m.Payload, &p)
		d := time.Duration(p.MS) * time.Millisecond
		time.Sleep(d / 2)
		h.send(&protocol.Message{Type: protocol.TypeProgress, ID: m.ID, Data: json.RawMessage(`{"pct":50}`)})
		time.Sleep(d - d/2)
		h.ok(m.ID, map[string]int{"slept": p.MS})
	case "garbage":
		h.raw(protocol.AppendFrame(nil, []byte("not json at all")))
	case "oversized":
		h.raw(binary.BigEndian.AppendUint32(nil, 1<<30), 'x', 'y', 'z')
	case "zero":
		h.raw(make([]byte, 4))
	case "half":
		h.raw(binary.BigEndian.AppendUint32(nil, 100), []byte("0123456789")...)
		os.Exit(1)
	case "badid":
		h.ok(m.ID+1000, m.Payload)
	case "grow":
		var p struct{ MB int }
		_ = json.Unmarshal(m.Payload, &p)
		b := make([]byte, p.MB<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		h.hoard = append(h.hoard, b)
		h.ok(m.ID, map[string]int64{"rss_mb": rssMB()})
	case "close_stdout":
		os.Stdout.Close()
	case "log":
		var line string
		_ = json.Unmarshal(m.Payload, &line)
		fmt.Fprintln(os.Stderr, line)
		h.ok(m.ID, map[string]bool{"logged": true})
	case "spawn":
		h.spawn(m.ID)
	case "late_progress":
		h.ok(m.ID, struct{}{})
		p := &protocol.Message{Type: protocol.TypeProgress, ID: m.ID, Data: json.RawMessage(`{"late":true}`)}
		h.late = []*protocol.Message{p, p, p}
	case "late_result":
		h.ok(m.ID, struct{}{})
		h.late = []*protocol.Message{{Type: protocol.TypeResult, ID: m.ID, OK: protocol.Bool(true), Result: json.RawMessage(`{}`)}}
	default:
		h.fail(m.ID, &protocol.ErrorInfo{Type: "UnknownCommand", Message: "unknown command: " + m.Command})
	}
}

// spawn starts a grandchild that stays in this process group (no Setpgid)
// and sleeps forever, to show that killing the group reaches it.
func (h *helper) spawn(id uint64) {
	exe, err := os.Executable()
	if err != nil {
		h.fail(id, &protocol.ErrorInfo{Type: "SpawnError", Message: err.Error()})
		return
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), EnvHelper+"=1", EnvStart+"="+modeNeverReady)
	if err := cmd.Start(); err != nil {
		h.fail(id, &protocol.ErrorInfo{Type: "SpawnError", Message: err.Error()})
		return
	}
	h.ok(id, map[string]int{"pid": cmd.Process.Pid})
}

func (h *helper) ok(id uint64, v any) {
	var raw json.RawMessage
	switch v := v.(type) {
	case json.RawMessage:
		raw = v
	default:
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		raw = b
	}
	if raw == nil {
		raw = json.RawMessage("null")
	}
	h.send(&protocol.Message{Type: protocol.TypeResult, ID: id, OK: protocol.Bool(true), Result: raw})
}

func (h *helper) fail(id uint64, e *protocol.ErrorInfo) {
	h.send(&protocol.Message{Type: protocol.TypeResult, ID: id, OK: protocol.Bool(false), Error: e})
}

func (h *helper) send(m *protocol.Message) {
	// Encode without HTML escaping so that echo returns the payload byte
	// for byte.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		panic(err)
	}
	// A write error means the agent is gone or stdout was closed on
	// purpose; either way there is nobody to tell.
	_ = h.out.WriteFrame(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
}

func (h *helper) raw(b []byte, more ...byte) {
	_, _ = os.Stdout.Write(append(b, more...))
}

// drainStdin reads stdin until EOF, then exits 0 (or sleeps, when told to
// ignore termination).
func (h *helper) drainStdin() {
	buf := make([]byte, 4096)
	for {
		if _, err := os.Stdin.Read(buf); err != nil {
			break
		}
	}
	if h.ignoreTerm {
		sleepForever()
	}
	os.Exit(0)
}

func sleepForever() {
	for {
		time.Sleep(time.Hour)
	}
}

func rssMB() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(rest, &kb)
			return kb >> 10
		}
	}
	return -1
}
