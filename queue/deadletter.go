package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// DeadLetter is a job that will not run again by itself, with why.
type DeadLetter struct {
	JobID   string `json:"job_id"`
	Session string `json:"session,omitempty"`
	// Subject is the original publish subject ("<prefix>.job.s.<session>"
	// or "<prefix>.job.any"), so that a replay is partitioned afresh.
	// WriteDeadLetter maps a stored partition subject back to it.
	Subject string `json:"subject"`
	// Queue is the job's queue ("default" for the old subjects).
	Queue string `json:"queue,omitempty"`
	// Job is the original body verbatim when it is valid JSON; otherwise
	// JobRaw holds it (base64 in JSON) and Job is empty.
	Job    json.RawMessage `json:"job,omitempty"`
	JobRaw []byte          `json:"job_raw,omitempty"`
	// Headers are the original message's headers.
	Headers map[string][]string `json:"headers,omitempty"`
	// JobSize is the original body's size in bytes.
	JobSize int `json:"job_size,omitempty"`
	// Omitted names what WriteDeadLetter left out so that the letter fits
	// under the server's max payload ("job body", "job body and headers"),
	// with the sizes; such a letter cannot be replayed. Empty when the
	// letter is whole.
	Omitted   string    `json:"omitted,omitempty"`
	Kind      string    `json:"kind"` // KindExhausted, KindBadRequest, ...
	Error     string    `json:"error"`
	Attempts  int       `json:"attempts"`
	Agent     string    `json:"agent,omitempty"`
	StreamSeq uint64    `json:"stream_seq"` // sequence in the jobs stream
	At        time.Time `json:"at"`
}

// DeadLetterEntry is a stored dead letter with its DLQ stream sequence, the
// handle ReplayDeadLetter takes.
type DeadLetterEntry struct {
	DeadLetter
	Seq uint64 `json:"seq"`
}

// deadLetterKey is the DLQ subject token of d: its job id, or its jobs
// stream sequence when the id is unusable (a bad request's id may be).
func deadLetterKey(d *DeadLetter) string {
	if ValidToken(d.JobID) {
		return d.JobID
	}
	return "seq-" + strconv.FormatUint(d.StreamSeq, 10)
}

// WriteDeadLetter stores d in the DLQ stream with Nats-Msg-Id
// "dlq-<jobid>-<streamseq>", so that writing the same death twice (a
// crash between DLQ and term, or the agent and the advisory watcher both
// acting) keeps one entry. A zero At is set to now; a stored partition
// subject is mapped back to its publish subject and fills Session.
func (t *Topology) WriteDeadLetter(ctx context.Context, d *DeadLetter) error {
	if d == nil {
		return errors.New("queue: write dead letter: dead letter is nil")
	}
	c := *d
	if c.At.IsZero() {
		c.At = time.Now().UTC()
	}
	if subj, ok := t.Config.publishSubject(c.Subject); ok {
		if c.Session == "" {
			_, c.Session, _ = t.Config.ParseJobSubject(c.Subject)
		}
		c.Subject = subj
	}
	if c.Queue == "" {
		if q, _, ok := t.Config.ParseJobSubject(c.Subject); ok {
			c.Queue = q
		}
	}
	if len(c.Job) > 0 && !json.Valid(c.Job) {
		c.JobRaw, c.Job = []byte(c.Job), nil
	}
	if c.JobSize == 0 {
		c.JobSize = len(c.Job) + len(c.JobRaw)
	}
	if len(c.Error) > maxLetterError {
		c.Error = c.Error[:maxLetterError] + "..."
	}
	key := deadLetterKey(&c)
	msgID := "dlq-" + key + "-" + strconv.FormatUint(c.StreamSeq, 10)
	data, err := t.fitDeadLetter(&c, msgID)
	if err != nil {
		return err
	}
	msg := &nats.Msg{Subject: t.Config.DLQSubject(key), Data: data, Header: nats.Header{}}
	if _, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("queue: write dead letter %s: %w", key, t.tooLarge(t.DLQ, "dead letter of job "+key, len(data)+headerOverhead(msgID), err))
	}
	return nil
}

// maxLetterError bounds a dead letter's error text.
const maxLetterError = 4 << 10

// fitDeadLetter encodes c, leaving out the job body, then its headers, as
// far as needed to fit under the server's max payload; Omitted says what
// went and why. The job's id, subject, stream sequence and the cause stay.
func (t *Topology) fitDeadLetter(c *DeadLetter, msgID string) ([]byte, error) {
	limit, whose := t.sizeLimit(t.DLQ)
	encode := func() ([]byte, error) {
		data, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("queue: encode dead letter %s: %w", c.JobID, err)
		}
		return data, nil
	}
	data, err := encode()
	if err != nil || limit <= 0 || len(data)+headerOverhead(msgID) <= limit {
		return data, err
	}
	whole := len(data) + headerOverhead(msgID)
	c.Job, c.JobRaw = nil, nil
	c.Omitted = fmt.Sprintf("job body of %d bytes (the letter would be %d bytes, over %s of %d bytes)", c.JobSize, whole, whose, limit)
	if data, err = encode(); err != nil || len(data)+headerOverhead(msgID) <= limit {
		return data, err
	}
	c.Headers = nil
	c.Omitted = fmt.Sprintf("job body of %d bytes and headers (the letter would be %d bytes, over %s of %d bytes)", c.JobSize, whole, whose, limit)
	if data, err = encode(); err != nil || len(data)+headerOverhead(msgID) <= limit {
		return data, err
	}
	// A long session token (a bad request's) is all that is left.
	c.Subject, c.Session = truncate(c.Subject), truncate(c.Session)
	c.Omitted = fmt.Sprintf("job body of %d bytes, headers, and the end of its subject (the letter would be %d bytes, over %s of %d bytes)", c.JobSize, whole, whose, limit)
	if data, err = encode(); err != nil || len(data)+headerOverhead(msgID) <= limit {
		return data, err
	}
	return nil, &TooLargeError{What: "dead letter of job " + c.JobID, Size: len(data) + headerOverhead(msgID), Limit: limit, Of: whose}
}

// DeadLetters lists up to limit dead letters, oldest first; limit <= 0
// lists them all.
func (t *Topology) DeadLetters(ctx context.Context, limit int) ([]DeadLetterEntry, error) {
	var out []DeadLetterEntry
	filter := t.Config.DLQSubject("*")
	for seq := uint64(1); limit <= 0 || len(out) < limit; {
		m, err := t.DLQ.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return out, fmt.Errorf("queue: list dead letters: %w", err)
		}
		e, err := decodeDeadLetter(m)
		if err != nil {
			return out, err
		}
		out = append(out, *e)
		seq = m.Sequence + 1
	}
	return out, nil
}

func decodeDeadLetter(m *jetstream.RawStreamMsg) (*DeadLetterEntry, error) {
	e := DeadLetterEntry{Seq: m.Sequence}
	if err := json.Unmarshal(m.Data, &e.DeadLetter); err != nil {
		return nil, fmt.Errorf("queue: dead letter at DLQ sequence %d is not valid: %w", m.Sequence, err)
	}
	return &e, nil
}

// ReplayDeadLetter republishes the job of DLQ entry seq to its original
// subject, then deletes the entry. The job keeps its id (written into the
// body if it only lived in a header or was derived from the stream
// sequence) but gets a new Nats-Msg-Id, "<id>-replay-<seq>", so the jobs
// stream does not drop it as a duplicate while a second replay of the same
// entry still is. The dead job's stored result (its JobSeq is the letter's
// StreamSeq, or it has none) is deleted first, so that WaitResult waits for
// the new run; results of other jobs that reused the id stay.
func (t *Topology) ReplayDeadLetter(ctx context.Context, seq uint64) error {
	m, err := t.DLQ.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: DLQ sequence %d", ErrDeadLetterNotFound, seq)
	}
	if err != nil {
		return fmt.Errorf("queue: replay dead letter %d: %w", seq, err)
	}
	e, err := decodeDeadLetter(m)
	if err != nil {
		return err
	}
	subject, ok := t.Config.publishSubject(e.Subject)
	if !ok {
		return fmt.Errorf("queue: replay dead letter %d: subject %q is not a job subject", seq, e.Subject)
	}
	if e.Omitted != "" {
		return fmt.Errorf("%w: dead letter %d cannot be replayed: it holds no job body (omitted %s)", ErrNotReplayable, seq, e.Omitted)
	}
	id := e.JobID
	if !ValidToken(id) {
		id = "seq-" + strconv.FormatUint(e.StreamSeq, 10)
	}
	body := []byte(e.Job)
	if len(body) == 0 {
		body = e.JobRaw
	}
	body = withJobID(body, id)

	msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{}}
	for k, vs := range e.Headers {
		// Nats-* headers are the server's and the publisher's bookkeeping
		// (Msg-Id, expectations, stream metadata), none of which apply to
		// the new message.
		if strings.HasPrefix(strings.ToLower(k), "nats-") {
			continue
		}
		msg.Header[k] = append([]string(nil), vs...)
	}
	replayID := id + replayInfix + strconv.FormatUint(seq, 10)
	// Refuse what the server would, before the old result is purged: the
	// id written into the body can push a job that just fitted over.
	size := len(body) + headerOverhead(replayID)
	for k, vs := range msg.Header {
		for _, v := range vs {
			size += len(k) + len(v) + 4
		}
	}
	if limit, whose := t.sizeLimit(t.Jobs); limit > 0 && size > limit {
		return fmt.Errorf("queue: replay dead letter %d: %w", seq, &TooLargeError{What: "replayed job " + id, Size: size, Limit: limit, Of: whose})
	}
	ack, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(replayID))
	if err != nil {
		return fmt.Errorf("queue: replay dead letter %d: %w", seq, t.tooLarge(t.Jobs, "replayed job "+id, size, err))
	}
	if ack.Duplicate {
		// Taken for a copy of a message stored under the replay id within
		// the dedup window: this replay's own, retried after it failed to
		// delete the letter, or anyone's who published under that id.
		// Only the first is a replay; otherwise the job would be lost with
		// its letter.
		if ours, err := t.replayed(ctx, ack, body, id, e.Queue); err != nil {
			return fmt.Errorf("queue: replay dead letter %d: %w", seq, err)
		} else if !ours {
			return fmt.Errorf("%w: dead letter %d: the replay id %s is taken by another message (jobs stream sequence %d) for the dedup window (%s); the dead letter stays, replay it after the window",
				ErrNotReplayable, seq, replayID, ack.Sequence, t.Config.DedupWindow)
		}
	}
	// The old result goes once the job is back, and only when the job
	// carries the same id (a body that is not a JSON object cannot carry
	// it: its replay's outcome is filed under the replay id).
	if ValidToken(e.JobID) && e.JobID == id && bodyID(body) == id {
		if err := t.deleteResultsOf(ctx, e.JobID, e.StreamSeq, NameOrDefault(e.Queue)); err != nil {
			return fmt.Errorf("queue: replay dead letter %d: delete old result: %w", seq, err)
		}
	}
	if err := t.DLQ.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("queue: replay dead letter %d: delete: %w", seq, err)
	}
	return nil
}

// replayed reports whether the message the server took the replay of body
// for a duplicate of (ack) is an earlier replay of the same job of queue
// q: still waiting with the same body, or gone with a result stored for id
// at its sequence.
func (t *Topology) replayed(ctx context.Context, ack *jetstream.PubAck, body []byte, id, q string) (bool, error) {
	stream, err := t.JS.Stream(ctx, ack.Stream)
	if err != nil {
		return false, err
	}
	m, err := stream.GetMsg(ctx, ack.Sequence)
	if err == nil {
		return bytes.Equal(m.Data, body), nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, err
	}
	if !ValidToken(id) {
		return false, nil
	}
	_, err = t.getJobResult(ctx, id, ack.Sequence, NameOrDefault(q))
	if errors.Is(err, ErrResultNotFound) {
		return false, nil
	}
	return err == nil, err
}

// bodyID is the "id" string of a job body, "" when it has none.
func bodyID(body []byte) string {
	var probe struct {
		ID string `json:"id"`
	}
	if json.Unmarshal(body, &probe) != nil {
		return ""
	}
	return probe.ID
}

// deleteResultsOf deletes the stored results of the job message at jobSeq
// under id (and any without a JobSeq, which may be its).
func (t *Topology) deleteResultsOf(ctx context.Context, id string, jobSeq uint64, q string) error {
	subject := t.Config.ResultSubject(id)
	for next := uint64(1); ; {
		m, err := t.Results.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		next = m.Sequence + 1
		var r Result
		if json.Unmarshal(m.Data, &r) == nil && r.JobSeq != 0 && (r.JobSeq != jobSeq || r.queueName() != q) {
			continue // another job's (sequences of two queues' streams may coincide)
		}
		if err := t.Results.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
	}
}

// withJobID returns body with "id" set when body is a JSON object without
// one. Anything else (not an object, id present) is returned unchanged.
func withJobID(body []byte, id string) []byte {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return body
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(trimmed, &fields) != nil {
		return body
	}
	if v, ok := fields["id"]; ok && !bytes.Equal(v, []byte("null")) {
		return body
	}
	idJSON, _ := json.Marshal(id)
	fields["id"] = idJSON
	out, err := json.Marshal(fields)
	if err != nil {
		return body
	}
	return out
}

// maxDeliveriesAdvisory is the part of the server's
// io.nats.jetstream.advisory.v1.max_deliver event we use.
type maxDeliveriesAdvisory struct {
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// WatchMaxDeliveries handles jobs the server gave up on: for each
// $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES advisory of the jobs stream it
// loads the job by stream sequence, stores an "exhausted" result (when the
// job id is known), writes a DLQ entry and deletes the job from the stream,
// where it would otherwise sit forever. Subscribers share the queue group
// "<prefix>-advisory", so each advisory is handled once across dispatchers.
// It returns once the subscription is registered and runs until ctx is done.
//
// Advisories are not persisted: one raised while no watcher runs is lost,
// and its job stays in the stream.
func (t *Topology) WatchMaxDeliveries(ctx context.Context, nc *nats.Conn, agent string, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	subject := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + t.Config.JobsStream() + ".*"
	if err := watch(ctx, nc, subject, t.Config.Prefix+"-advisory", func(m *nats.Msg) {
		t.handleMaxDeliveries(ctx, m.Data, agent, log)
	}); err != nil {
		return fmt.Errorf("queue: watch max deliveries: %w", err)
	}
	return nil
}

// watch subscribes handle to subject in queue group, returns once the
// server has registered the subscription, and unsubscribes when ctx ends.
func watch(ctx context.Context, nc *nats.Conn, subject, group string, handle nats.MsgHandler) error {
	sub, err := nc.QueueSubscribe(subject, group, handle)
	if err != nil {
		return err
	}
	// FlushWithContext refuses a context without a deadline, and ctx is
	// the watcher's lifetime, which usually has none.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return err
	}
	context.AfterFunc(ctx, func() { _ = sub.Unsubscribe() })
	return nil
}

func (t *Topology) handleMaxDeliveries(ctx context.Context, data []byte, agent string, log *zap.Logger) {
	var adv maxDeliveriesAdvisory
	if err := json.Unmarshal(data, &adv); err != nil {
		log.Warn("undecodable max-deliveries advisory", zap.Error(err))
		return
	}
	if adv.Stream != t.Config.JobsStream() {
		return
	}
	log = log.With(zap.Uint64("stream_seq", adv.StreamSeq), zap.String("consumer", adv.Consumer),
		zap.Uint64("deliveries", adv.Deliveries))
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	m, err := t.Jobs.GetMsg(ctx, adv.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Acked, termed or already handled by another watcher.
		log.Debug("max-deliveries job already gone")
		return
	}
	if err != nil {
		log.Error("load job after max deliveries", zap.Error(err))
		return
	}

	reason := fmt.Sprintf("no verdict after %d deliveries (consumer %s MaxDeliver)", adv.Deliveries, adv.Consumer)
	var id, session string
	job, err := ParseJob(m.Subject, m.Header, m.Data, m.Sequence, t.Config)
	var bre *BadRequestError
	switch {
	case err == nil:
		id, session = job.ID, job.Session
	case errors.As(err, &bre):
		id, session = bre.JobID, bre.Session
		reason += "; " + bre.Reason
	}
	log = log.With(zap.String("job_id", id), zap.String("session", session))

	now := time.Now().UTC()
	if id != "" {
		r := &Result{
			ID: id, JobSeq: m.Sequence, Queue: t.Config.QueueName(), Session: session, Agent: agent, Attempt: int(adv.Deliveries), FinishedAt: now,
			Error: &ErrorInfo{Kind: KindExhausted, Message: reason},
		}
		if err := t.StoreResult(ctx, r); err != nil {
			log.Error("store exhausted result", zap.Error(err))
			return
		}
	}
	d := &DeadLetter{
		JobID: id, Session: session, Subject: m.Subject, Job: m.Data, Headers: m.Header,
		Kind: KindExhausted, Error: reason, Attempts: int(adv.Deliveries), Agent: agent,
		StreamSeq: m.Sequence, At: now,
	}
	if err := t.WriteDeadLetter(ctx, d); err != nil {
		log.Error("write dead letter", zap.Error(err))
		return
	}
	if err := t.Jobs.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		log.Error("delete exhausted job", zap.Error(err))
		return
	}
	log.Warn("job exhausted by max deliveries, moved to DLQ")
}
