package protocol

import "encoding/json"

// Version is the protocol version this package speaks. A worker announces
// it in its ready frame.
const Version = 1

// Message types.
const (
	TypeReady      = "ready"
	TypeCall       = "call"
	TypeResult     = "result"
	TypeProgress   = "progress"
	TypePing       = "ping"
	TypePong       = "pong"
	TypeSessionEnd = "session_end"
	TypeShutdown   = "shutdown"
	// TypeCancel asks the worker to stop the call with that id (agent to
	// worker, no reply of its own): the worker answers the call with a
	// result, normally ok:false with error type "Canceled". Sent only to
	// workers whose ready frame lists FeatureCancel.
	TypeCancel = "cancel"
)

// Features a worker may list in its ready frame ("features":[...]).
const (
	// FeatureCancel: the worker understands cancel frames.
	FeatureCancel = "cancel"
	// FeatureCancelSignal: after a cancel frame, send SIGUSR1 to the
	// worker's main thread (the thread whose id is the pid), and again
	// every 50 ms until the call is answered, if the ready frame's pid is
	// the process the agent started. Such a worker reads its frames on its
	// main thread, which the signal interrupts so that it reads the cancel
	// while a handler runs. A worker learns the agent's pid from
	// AgentPIDEnv.
	FeatureCancelSignal = "cancel_signal"
)

// AgentPIDEnv is set in every worker's environment to the pid of the
// process that started it (the agent), so that a worker can tell whether it
// is that process's child (see FeatureCancelSignal).
const AgentPIDEnv = "PROCFLEET_AGENT_PID"

// Message is one frame's object. It is a union of every message type: Type
// says which fields are meaningful. Payload, Result and Data stay raw so that
// job payloads are never decoded and re-encoded on their way through.
type Message struct {
	Type string `json:"type"`
	ID   uint64 `json:"id,omitempty"`

	// ready
	Protocol int      `json:"protocol,omitempty"`
	PID      int      `json:"pid,omitempty"`
	Commands []string `json:"commands,omitempty"`
	Features []string `json:"features,omitempty"`

	// call
	Command    string          `json:"command,omitempty"`
	Session    string          `json:"session,omitempty"`
	NewSession bool            `json:"new_session,omitempty"`
	JobID      string          `json:"job_id,omitempty"`
	Attempt    int             `json:"attempt,omitempty"`
	DeadlineMS int64           `json:"deadline_ms,omitempty"`
	Payload    json.RawMessage `json:"payload,omitempty"`

	// result
	OK     *bool           `json:"ok,omitempty"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorInfo      `json:"error,omitempty"`

	// progress
	Data json.RawMessage `json:"data,omitempty"`
}

// ErrorInfo is the error a worker reports for a failed call.
type ErrorInfo struct {
	Type      string `json:"type,omitempty"`
	Message   string `json:"message"`
	Retryable bool   `json:"retryable,omitempty"`
}

// Succeeded reports whether m is a result frame with ok:true.
func (m *Message) Succeeded() bool { return m.OK != nil && *m.OK }

// Bool returns a pointer to b, for Message.OK.
func Bool(b bool) *bool { return &b }
