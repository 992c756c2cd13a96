package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// DefaultMaxAttempts is a job's attempt budget when it does not set one.
const DefaultMaxAttempts = 5

// MaxAttemptsLimit is the largest max_attempts a job may ask for. It stays
// below Config.MaxDeliver's default so that the agent, not the server, gives
// a job its final verdict.
const MaxAttemptsLimit = 20

// MaxTimeoutMS is the largest timeout_ms a job may ask for: 24 hours. An
// agent may cap it lower (agent --max-job-timeout).
const MaxTimeoutMS = 24 * 60 * 60 * 1000

// Job is the envelope of one job: the message body on "<prefix>.job.s.<session>"
// or "<prefix>.job.any".
type Job struct {
	// ID identifies the job end to end (result subject, dedup). Optional
	// on the wire: Nats-Msg-Id, then "seq-<stream sequence>" stand in (see
	// OutcomeID). When both are sent they must agree.
	ID      string          `json:"id,omitempty"`
	Command string          `json:"command"`
	Payload json.RawMessage `json:"payload,omitempty"`
	// TimeoutMS bounds one attempt; 0 means the agent's default.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// MaxAttempts is the attempt budget; 0 means DefaultMaxAttempts, at
	// most MaxAttemptsLimit. ParseJob fills in the default.
	MaxAttempts int `json:"max_attempts,omitempty"`
	// RequireSession fails the job with session_lost rather than running it
	// on a fresh worker when its session's worker is gone.
	RequireSession bool `json:"require_session,omitempty"`
	// Meta is opaque to the fleet and must be a JSON object.
	Meta json.RawMessage `json:"meta,omitempty"`
	// ExpiresAt (RFC 3339) and TTLMS (from when the job entered the
	// queue) set a deadline: a job delivered after it ends "expired"
	// without running. At most one of them. See Job.Deadline.
	ExpiresAt string `json:"expires_at,omitempty"`
	TTLMS     int64  `json:"ttl_ms,omitempty"`
	// Session comes from the subject, never from the body.
	Session string `json:"-"`
}

// ParseJob validates a delivered job. subject is the stored subject
// (the partition subject for session jobs); the session is taken from it.
// The job's id, and the id its outcome is stored under even when the job is
// a bad request, is OutcomeID's: stable across redeliveries, always a valid
// token. MaxAttempts 0 becomes DefaultMaxAttempts. Every error is a
// *BadRequestError carrying that outcome id.
func ParseJob(subject string, hdr nats.Header, data []byte, streamSeq uint64, cfg Config) (*Job, error) {
	cfg = cfg.WithDefaults()
	session, subjectOK := cfg.jobSubject(subject)

	var j Job
	decodeProblem := decodeJob(data, &j)
	bodyID, idProblem := j.ID, ""
	if decodeProblem != "" {
		// The body is broken: dig the id out of what can be read, so the
		// outcome is still stored under the id its publisher looks for.
		bodyID, idProblem = rawBodyID(data)
	}
	hdrID := hdr.Get(jetstream.MsgIDHeader)
	id := OutcomeID(bodyID, hdrID, streamSeq)
	bad := func(format string, args ...any) error {
		return &BadRequestError{JobID: id, Session: session, Reason: fmt.Sprintf(format, args...)}
	}
	switch {
	case !subjectOK:
		return nil, bad("subject %q is not a job subject under %q", truncate(subject), cfg.Prefix)
	case session != "" && !ValidToken(session):
		return nil, bad("session id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(session))
	case idProblem != "":
		return nil, bad("%s", idProblem)
	case decodeProblem != "":
		return nil, bad("%s", decodeProblem)
	case bodyID != "" && hdrID != "" && !idsAgree(bodyID, hdrID):
		return nil, bad("body id %q disagrees with Nats-Msg-Id %q: send the same id in both, or only one of them", truncate(bodyID), truncate(hdrID))
	case bodyID != "" && !ValidToken(bodyID):
		return nil, bad("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(bodyID))
	case bodyID == "" && hdrID != "" && !ValidToken(hdrID):
		return nil, bad("job id (Nats-Msg-Id) %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(hdrID))
	}
	if reason := checkJob(&j); reason != "" {
		return nil, bad("%s", reason)
	}
	j.ID, j.Session = id, session
	if j.MaxAttempts == 0 {
		j.MaxAttempts = DefaultMaxAttempts
	}
	return &j, nil
}

// OutcomeID is the id a delivered message's outcome (result, dead letter) is
// stored under, whatever the message holds; it is always a valid token:
//
//   - when the body id and the Nats-Msg-Id header are both set and disagree
//     (the job is then a bad request), the Nats-Msg-Id, which the jobs
//     stream deduplicated on, so that a body id cannot squat another job's
//     id; "seq-<stream sequence>" if that header is not a valid token;
//   - otherwise the body id if it is a valid token, else the Nats-Msg-Id if
//     it is one, else "seq-<stream sequence>".
//
// A Nats-Msg-Id of "<body id>-replay-<n>" agrees with the body id: that is
// how ReplayDeadLetter republishes a job.
func OutcomeID(bodyID, msgID string, streamSeq uint64) string {
	seqID := "seq-" + strconv.FormatUint(streamSeq, 10)
	if bodyID != "" && msgID != "" && !idsAgree(bodyID, msgID) {
		if ValidToken(msgID) {
			return msgID
		}
		return seqID
	}
	switch {
	case ValidToken(bodyID):
		return bodyID
	case ValidToken(msgID):
		return msgID
	}
	return seqID
}

// idsAgree reports whether a body id and a Nats-Msg-Id name the same job.
func idsAgree(bodyID, msgID string) bool {
	if bodyID == msgID {
		return true
	}
	rest, ok := strings.CutPrefix(msgID, bodyID+replayInfix)
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.ParseUint(rest, 10, 64)
	return err == nil
}

// replayInfix joins a job id and a DLQ sequence in the Nats-Msg-Id of a
// replayed dead letter.
const replayInfix = "-replay-"

// rawBodyID reads the id of an undecodable body. A non-string envelope id
// is reported, not skipped: the publisher meant something by it.
func rawBodyID(data []byte) (id, problem string) {
	raw, found := envelopeID(data)
	if !found {
		return "", ""
	}
	if err := json.Unmarshal(raw, &id); err != nil {
		return "", "field \"id\" must be a string"
	}
	return id, ""
}

// envelopeID reads the top-level "id" of a JSON object, streaming so that
// the id is still found when a later part of the body is malformed (the
// error then names the job). A null id counts as absent.
func envelopeID(data []byte) (json.RawMessage, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, false
		}
		// encoding/json matches keys case-insensitively; so does this.
		if k, _ := key.(string); strings.EqualFold(k, "id") {
			if bytes.Equal(v, []byte("null")) {
				return nil, false
			}
			return v, true
		}
	}
	return nil, false
}

// decodeJob decodes the body strictly enough to give one clear reason.
func decodeJob(data []byte, j *Job) string {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return "body is empty, want a JSON object"
	}
	if trimmed[0] != '{' {
		if json.Valid(trimmed) {
			return "body must be a JSON object"
		}
		return "body is not valid JSON"
	}
	if err := json.Unmarshal(trimmed, j); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Sprintf("field %q has the wrong type: got JSON %s, want %s", te.Field, te.Value, jsonKind(te.Type.Kind().String()))
		}
		return "body is not valid JSON: " + err.Error()
	}
	if bytes.Equal(j.Payload, []byte("null")) {
		j.Payload = nil
	}
	if bytes.Equal(j.Meta, []byte("null")) {
		j.Meta = nil
	}
	return ""
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int64", "int32":
		return "an integer"
	default:
		return goKind
	}
}

// checkJob validates the envelope fields (not the id or session).
func checkJob(j *Job) string {
	switch {
	case j.Command == "":
		return "field \"command\" is required"
	case j.TimeoutMS < 0 || j.TimeoutMS > MaxTimeoutMS:
		return fmt.Sprintf("field \"timeout_ms\" must be between 0 and %d (24h), got %d", MaxTimeoutMS, j.TimeoutMS)
	case j.MaxAttempts < 0 || j.MaxAttempts > MaxAttemptsLimit:
		return fmt.Sprintf("field \"max_attempts\" must be between 0 and %d, got %d", MaxAttemptsLimit, j.MaxAttempts)
	case len(j.Payload) > 0 && !json.Valid(j.Payload):
		return "field \"payload\" is not valid JSON"
	case len(j.Meta) > 0 && (!json.Valid(j.Meta) || bytes.TrimSpace(j.Meta)[0] != '{'):
		return "field \"meta\" must be a JSON object"
	}
	return checkDeadline(j)
}

func truncate(s string) string {
	if len(s) > 140 {
		return s[:140] + "..."
	}
	return s
}

// EncodeJob validates job and returns its body. The id may be empty (the
// Nats-Msg-Id header then names the job); Session is not part of the body.
func EncodeJob(job *Job) ([]byte, error) {
	if err := validateJob(job); err != nil {
		return nil, err
	}
	return json.Marshal(job)
}

func validateJob(job *Job) error {
	if job == nil {
		return &BadRequestError{Reason: "job is nil"}
	}
	if job.ID != "" && !ValidToken(job.ID) {
		return &BadRequestError{Session: job.Session, Reason: fmt.Sprintf("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(job.ID))}
	}
	if reason := checkJob(job); reason != "" {
		return &BadRequestError{JobID: job.ID, Session: job.Session, Reason: reason}
	}
	return nil
}

// Submit publishes job for session ("" publishes to the any subject) and
// waits for the stream's ack. An empty job.ID is generated and set. The id
// is also the Nats-Msg-Id, so resubmitting within DedupWindow is dropped:
// the ack then has Duplicate set and no error is returned. Invalid input is
// a *BadRequestError and nothing is published.
func (t *Topology) Submit(ctx context.Context, session string, job *Job) (*jetstream.PubAck, error) {
	msg, err := t.jobMsg(session, job)
	if err != nil {
		return nil, err
	}
	ack, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(job.ID))
	if err != nil {
		return nil, fmt.Errorf("queue: submit job %s: %w", job.ID, t.queueFull(err))
	}
	return ack, nil
}

// SubmitAsync is Submit without waiting for the ack; the future resolves
// to it. Bound in-flight publishes with jetstream.WithPublishAsyncMaxPending.
func (t *Topology) SubmitAsync(session string, job *Job) (jetstream.PubAckFuture, error) {
	msg, err := t.jobMsg(session, job)
	if err != nil {
		return nil, err
	}
	f, err := t.JS.PublishMsgAsync(msg, jetstream.WithMsgID(job.ID))
	if err != nil {
		return nil, fmt.Errorf("queue: submit job %s: %w", job.ID, err)
	}
	return f, nil
}

func (t *Topology) jobMsg(session string, job *Job) (*nats.Msg, error) {
	if job == nil {
		return nil, &BadRequestError{Session: session, Reason: "job is nil"}
	}
	if session != "" && !ValidToken(session) {
		return nil, &BadRequestError{JobID: job.ID, Session: session,
			Reason: fmt.Sprintf("session id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(session))}
	}
	// Validate before generating an id so that a rejected job is left as
	// it was.
	if err := validateJob(job); err != nil {
		return nil, err
	}
	if job.ID == "" {
		job.ID = nuid.Next()
	}
	job.Session = session
	data, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("queue: encode job %s: %w", job.ID, err)
	}
	subject := t.Config.AnySubject()
	if session != "" {
		subject = t.Config.SessionSubject(session)
	}
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}, nil
}
