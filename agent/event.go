package agent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// WorkerRow is one worker in the agent's info: what the dashboard shows.
type WorkerRow struct {
	Queue      string    `json:"queue,omitempty"` // the pool's queue; empty: the default one
	ID         string    `json:"id,omitempty"`
	PID        int       `json:"pid,omitempty"`
	State      string    `json:"state"`
	Retiring   bool      `json:"retiring,omitempty"`
	RSS        int64     `json:"rss,omitempty"` // bytes; 0 when unknown
	Jobs       int       `json:"jobs"`
	Sessions   int       `json:"sessions"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	CurrentJob string    `json:"current_job,omitempty"`
}

// current maps a worker id to the job it runs now.
type current struct {
	mu   sync.Mutex
	jobs map[string]string
}

func (c *current) set(workerID, jobID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.jobs == nil {
		c.jobs = map[string]string{}
	}
	if jobID == "" {
		delete(c.jobs, workerID)
		return
	}
	c.jobs[workerID] = jobID
}

func (c *current) get(workerID string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.jobs[workerID]
}

// workerRows lists the pool's workers with their RSS and current job.
func (a *lane) workerRows(ws []pool.WorkerStats) []WorkerRow {
	q := a.queueName()
	if q == queue.DefaultQueue {
		q = ""
	}
	rows := make([]WorkerRow, 0, len(ws))
	for _, w := range ws {
		r := WorkerRow{Queue: q, ID: w.ID, PID: w.PID, State: w.State, Retiring: w.Retiring, Jobs: w.Jobs,
			Sessions: w.Sessions, StartedAt: w.StartedAt}
		if w.PID > 0 {
			r.RSS = readRSS(w.PID)
		}
		if w.ID != "" {
			r.CurrentJob = a.current.get(w.ID)
		}
		rows = append(rows, r)
	}
	return rows
}

// readRSS reads a process's resident set from /proc (Linux); 0 elsewhere or
// when the process is gone.
func readRSS(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0
	}
	f := bytes.Fields(b)
	if len(f) < 2 {
		return 0
	}
	pages, err := strconv.ParseInt(string(f[1]), 10, 64)
	if err != nil {
		return 0
	}
	// In 64 KiB steps: the dashboard shows MiB, and a worker whose RSS
	// moves by a page would be news every second.
	return pages * int64(os.Getpagesize()) &^ (64<<10 - 1)
}

// maxEventError bounds the error text an attempt event carries.
const maxEventError = 300

// attemptEvent encodes the end of one attempt on a worker as the core NATS
// event (fire and forget: one small message, no ack, no store) that
// publishEvent, or the publisher with the job's result, sends.
func (j *job) attemptEvent(workerID string, pid int, started time.Time, res worker.Result, err error) []byte {
	a := j.r.a
	ev := queue.AttemptEvent{
		ID: j.job.ID, Session: j.job.Session, Command: j.job.Command, TimeoutMS: j.job.TimeoutMS,
		MaxAttempts: j.maxAttempts(), Attempt: j.attempt, Agent: a.cfg.Name, Worker: workerID, WorkerPID: pid,
		StartedAt: started, FinishedAt: time.Now(), Outcome: "ok",
	}
	if j.meta != nil {
		ev.JobSeq, ev.EnqueuedAt = j.meta.Sequence.Stream, j.meta.Timestamp
	}
	switch {
	case err != nil:
		ev.Outcome, ev.Kind, ev.Error = "retry", queue.KindApp, err.Error()
		if errors.Is(err, worker.ErrTimeout) {
			ev.Kind = queue.KindTimeout
		} else if errors.Is(err, worker.ErrCanceled) {
			ev.Kind = queue.KindCanceled
		}
	case !res.OK:
		ev.Outcome, ev.Kind = "failed", queue.KindApp
		if res.Error != nil {
			ev.Error = res.Error.Message
			if res.Error.Type != "" {
				ev.Error = fmt.Sprintf("%s: %s", res.Error.Type, res.Error.Message)
			}
			if res.Error.Retryable {
				ev.Outcome = "retry"
			}
		}
	}
	if ev.Outcome == "retry" && j.attempt >= j.maxAttempts() {
		ev.Outcome = "failed"
	}
	if len(ev.Error) > maxEventError {
		ev.Error = ev.Error[:maxEventError]
	}
	return appendAttemptEvent(make([]byte, 0, 384), &ev)
}

// publishEvent publishes the job's attempt event unless it went out with
// its result already.
func (j *job) publishEvent() { j.sendEvent(j.takeEvent()) }

// sendEvent publishes the encoded attempt event ev, if any.
func (j *job) sendEvent(ev []byte) {
	if ev != nil {
		_ = j.r.a.nc.Publish(j.r.a.cfg.Queue.AttemptEventSubject(j.job.ID), ev)
	}
}

func (j *job) takeEvent() []byte {
	j.mu.Lock()
	defer j.mu.Unlock()
	ev := j.event
	j.event = nil
	return ev
}

// appendAttemptEvent encodes ev as JSON, as json.Marshal would (less the
// reflection and any allocation but b's growth: this runs once per attempt
// on the hot path).
func appendAttemptEvent(b []byte, ev *queue.AttemptEvent) []byte {
	b = append(b, `{"id":`...)
	b = appendJSONString(b, ev.ID)
	if ev.JobSeq != 0 {
		b = strconv.AppendUint(append(b, `,"job_seq":`...), ev.JobSeq, 10)
	}
	b = appendStrField(b, `,"queue":`, ev.Queue)
	b = appendStrField(b, `,"session":`, ev.Session)
	b = appendStrField(b, `,"command":`, ev.Command)
	if ev.TimeoutMS != 0 {
		b = strconv.AppendInt(append(b, `,"timeout_ms":`...), ev.TimeoutMS, 10)
	}
	if ev.MaxAttempts != 0 {
		b = strconv.AppendInt(append(b, `,"max_attempts":`...), int64(ev.MaxAttempts), 10)
	}
	b = strconv.AppendInt(append(b, `,"attempt":`...), int64(ev.Attempt), 10)
	b = appendJSONString(append(b, `,"agent":`...), ev.Agent)
	b = appendStrField(b, `,"worker":`, ev.Worker)
	if ev.WorkerPID != 0 {
		b = strconv.AppendInt(append(b, `,"worker_pid":`...), int64(ev.WorkerPID), 10)
	}
	b = appendTimeField(b, `,"enqueued_at":`, ev.EnqueuedAt)
	b = appendTimeField(b, `,"started_at":`, ev.StartedAt)
	b = appendTimeField(b, `,"finished_at":`, ev.FinishedAt)
	b = appendJSONString(append(b, `,"outcome":`...), ev.Outcome)
	b = appendStrField(b, `,"kind":`, ev.Kind)
	b = appendStrField(b, `,"error":`, ev.Error)
	return append(b, '}')
}

// appendStrField appends key (`,"name":`) and v as a JSON string, unless v
// is empty (omitempty).
func appendStrField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return appendJSONString(append(b, key...), v)
}

// appendTimeField appends key (`,"name":`) and t as encoding/json writes a
// time, unless t is zero (omitzero).
func appendTimeField(b []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	b = append(append(b, key...), '"')
	return append(t.AppendFormat(b, time.RFC3339Nano), '"')
}

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD,
// as with encoding/json.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c == '\b':
				b = append(b, '\\', 'b')
			case c == '\f':
				b = append(b, '\\', 'f')
			case c < 0x20 || c == '<' || c == '>' || c == '&':
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
