package queue

import "time"

// AttemptEvent is what an agent publishes on core NATS, not stored, when an
// attempt of a job ends on a worker: <prefix>.event.attempt.<job-id>. The
// dispatcher's dashboard keeps the recent ones in memory to show a job's
// attempts and the recent failures. Subscribers may miss events (core NATS);
// the stored result stays the job's outcome.
type AttemptEvent struct {
	ID          string    `json:"id"`
	JobSeq      uint64    `json:"job_seq,omitempty"`
	Queue       string    `json:"queue,omitempty"` // the job's queue; empty: the default one
	Session     string    `json:"session,omitempty"`
	Command     string    `json:"command,omitempty"`
	TimeoutMS   int64     `json:"timeout_ms,omitempty"`
	MaxAttempts int       `json:"max_attempts,omitempty"`
	Attempt     int       `json:"attempt"`
	Agent       string    `json:"agent"`
	Worker      string    `json:"worker,omitempty"`
	WorkerPID   int       `json:"worker_pid,omitempty"`
	EnqueuedAt  time.Time `json:"enqueued_at,omitzero"`
	StartedAt   time.Time `json:"started_at,omitzero"`
	FinishedAt  time.Time `json:"finished_at,omitzero"`
	// Outcome is "ok", "failed" (the job ends with this error) or "retry"
	// (the job will be delivered again, or dead-lettered if out of
	// attempts).
	Outcome string `json:"outcome"`
	Kind    string `json:"kind,omitempty"`  // the error kind when not ok
	Error   string `json:"error,omitempty"` // the error message, cut to 300 bytes
}

// AttemptEventSubject is where an agent publishes the AttemptEvent of job id.
func (c Config) AttemptEventSubject(id string) string { return c.Prefix + ".event.attempt." + id }
