package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/internal/jsonappend"
)

// Error kinds of a failed result.
const (
	KindApp         = "app"          // the worker reported an error
	KindTimeout     = "timeout"      // the attempt exceeded its timeout
	KindSessionLost = "session_lost" // require_session and the session's worker is gone
	KindExhausted   = "exhausted"    // attempts ran out (or the server's MaxDeliver did)
	KindBadRequest  = "bad_request"  // the job can never run (see BadRequestError)
	KindCanceled    = "canceled"     // the job was canceled
	KindPoison      = "poison"       // its attempts killed workers up to the agent's poison bound
	// KindTooLarge: the job's real outcome (its result, or its error
	// message) is too big to store under the server's max payload; the
	// message names the size and the limit. Final: a rerun would produce
	// the same outcome.
	KindTooLarge = "too_large"
	// KindUnroutable: no live agent served the job's queue for longer than
	// the dispatcher's --unroutable-after; a dead letter too.
	KindUnroutable = "unroutable"
)

// Result is the envelope stored on "<prefix>.result.<id>".
type Result struct {
	ID string `json:"id"`
	// JobSeq is the job's sequence in the jobs stream: with ID, the
	// result's identity. A rerun of the same message (redelivery, crash)
	// has the same JobSeq and is deduplicated; a new job that reuses an id
	// (after the jobs stream's dedup window, or a replayed dead letter) has
	// a new JobSeq and stores its own result. A delayed job canceled
	// before it was due never became a job message: its JobSeq is its
	// delay message's sequence, the one its submission's PubAck gave, so
	// that a waiter with that sequence gets this outcome and no other
	// job's waiter does. 0 when unknown.
	JobSeq uint64 `json:"job_seq,omitempty"`
	// Queue is the queue the job ran on ("default" for the old subjects);
	// JobSeq is a sequence in that queue's jobs stream. Empty from agents
	// that predate queues.
	Queue      string          `json:"queue,omitempty"`
	OK         bool            `json:"ok"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *ErrorInfo      `json:"error,omitempty"`
	Session    string          `json:"session,omitempty"`
	Agent      string          `json:"agent,omitempty"`
	Worker     string          `json:"worker,omitempty"`
	WorkerPID  int             `json:"worker_pid,omitempty"`
	NewSession bool            `json:"new_session,omitempty"`
	Attempt    int             `json:"attempt,omitempty"`
	EnqueuedAt time.Time       `json:"enqueued_at,omitzero"`
	StartedAt  time.Time       `json:"started_at,omitzero"`
	FinishedAt time.Time       `json:"finished_at,omitzero"`
}

// ErrorInfo says why a job failed.
type ErrorInfo struct {
	Kind    string `json:"kind"`           // one of the Kind constants
	Message string `json:"message"`        // human readable
	Type    string `json:"type,omitempty"` // the worker's exception type, for KindApp
}

// resultMsgID is the dedup id of a result, "<id>:<queue>:<job stream
// sequence>", so that a rerun of the same job message is dropped while a
// new job that reuses the id, or a job of another queue whose stream gave
// it the same sequence, stores its own result. Ids and queue names are
// tokens of [A-Za-z0-9_-], which never hold ':', so two different jobs
// never share a key. A result without a JobSeq (a caller that does not
// know it) is keyed by its bare id: with no ':' it cannot take a keyed
// result's place either.
//
// The keys were "<id>-<seq>" and "<id>-<queue>-<seq>" before, which two
// jobs could share ("col" at sequence 29 and a delayed "col-29" canceled
// before it was due, then keyed "col-29"): the second result was dropped
// as a duplicate while its job was acked. A rerun whose first result an
// older agent stored under the old key, within the results dedup window,
// now stores a second result of the same job; both are that job's outcome,
// which is acceptable for one upgrade.
func resultMsgID(r *Result) string {
	if r.JobSeq == 0 {
		return r.ID
	}
	return r.ID + ":" + r.queueName() + ":" + strconv.FormatUint(r.JobSeq, 10)
}

// headerOverhead bounds what the NATS header block of a message holding
// only a Nats-Msg-Id adds to its size ("NATS/1.0\r\n", the header line,
// the closing "\r\n").
func headerOverhead(msgID string) int {
	return len("NATS/1.0\r\n"+jetstream.MsgIDHeader+": \r\n\r\n") + len(msgID)
}

// MaxPayload is the largest message (headers included) the server takes,
// as the connection last heard it; 0 if unknown.
func (t *Topology) MaxPayload() int {
	if t.JS == nil || t.JS.Conn() == nil {
		return 0
	}
	return int(t.JS.Conn().MaxPayload())
}

// sizeLimit is the largest message stream s takes: the server's max
// payload, or the stream's MaxMsgSize (as last read) when smaller; 0 if
// unknown. whose names it.
func (t *Topology) sizeLimit(s jetstream.Stream) (limit int, whose string) {
	limit, whose = t.MaxPayload(), "the server's max payload"
	if s == nil {
		return limit, whose
	}
	if info := s.CachedInfo(); info != nil {
		if m := int(info.Config.MaxMsgSize); m > 0 && (limit <= 0 || m < limit) {
			return m, "stream " + info.Config.Name + "'s max message size"
		}
	}
	return limit, whose
}
func (t *Topology) resultMsg(r *Result) (*nats.Msg, string, error) {
	if r == nil {
		return nil, "", errors.New("queue: store result: result is nil")
	}
	if !ValidToken(r.ID) {
		return nil, "", fmt.Errorf("queue: store result: job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(r.ID))
	}
	data, ok := appendResult(make([]byte, 0, len(r.Result)+320), r)
	if !ok {
		var err error
		if data, err = json.Marshal(r); err != nil {
			return nil, "", fmt.Errorf("queue: encode result %s: %w", r.ID, err)
		}
	}
	msgID := resultMsgID(r)
	if limit, whose := t.sizeLimit(t.Results); limit > 0 && len(data)+headerOverhead(msgID) > limit {
		return nil, "", &TooLargeError{What: "result of job " + r.ID, Size: len(data) + headerOverhead(msgID), Limit: limit, Of: whose}
	}
	return &nats.Msg{Subject: t.Config.ResultSubject(r.ID), Data: data, Header: nats.Header{}}, msgID, nil
}

// TooLargeResult is what is stored instead of r when r is too big (err, a
// *TooLargeError): a failed result of kind too_large naming the size and
// the limit, with r's identity and timings. It always fits.
func TooLargeResult(r *Result, err error) *Result {
	c := *r
	c.OK, c.Result = false, nil
	if !ValidToken(c.Session) {
		c.Session = "" // a bad request's session token can be long
	}
	what := "the result"
	if r.Error != nil {
		what = "the error result (" + r.Error.Kind + ")"
	}
	msg := what + " is too large to store"
	var tl *TooLargeError
	if errors.As(err, &tl) {
		msg += ": " + tl.Sizes()
	} else if err != nil {
		msg += ": " + err.Error()
	}
	c.Error = &ErrorInfo{Kind: KindTooLarge, Message: msg}
	return &c
}

// tooLarge maps a refusal for size, the client's (over the server's max
// payload) or the stream's (over its max message size), to a
// *TooLargeError; other errors are returned as they are.
func (t *Topology) tooLarge(s jetstream.Stream, what string, size int, err error) error {
	switch {
	case errors.Is(err, nats.ErrMaxPayload):
		return &TooLargeError{What: what, Size: size, Limit: t.MaxPayload(), Of: "the server's max payload"}
	case errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		tl := &TooLargeError{What: what, Size: size, Of: "the stream's max message size"}
		if limit, whose := t.sizeLimit(s); limit > 0 && limit < size {
			tl.Limit, tl.Of = limit, whose
		}
		return tl
	}
	return err
}

// appendResult appends r as the JSON object json.Marshal would write, for
// the common case, without reflection: every agent stores one per job. The
// result value is copied verbatim rather than compacted. It reports false,
// leaving r to json.Marshal, when a string needs escaping, the value is not
// valid JSON, or a time does not fit RFC 3339.
func appendResult(b []byte, r *Result) ([]byte, bool) {
	o := jsonappend.Start(b, `{`)
	o.String(`"id":`, r.ID, false)
	o.Uint(`,"job_seq":`, r.JobSeq)
	o.String(`,"queue":`, r.Queue, true)
	o.Bool(`,"ok":`, r.OK, false)
	o.Raw(`,"result":`, r.Result)
	if e := r.Error; e != nil {
		o.Open(`,"error":{`)
		o.String(`"kind":`, e.Kind, false)
		o.String(`,"message":`, e.Message, false)
		o.String(`,"type":`, e.Type, true)
		o.Close()
	}
	o.String(`,"session":`, r.Session, true)
	o.String(`,"agent":`, r.Agent, true)
	o.String(`,"worker":`, r.Worker, true)
	o.Int(`,"worker_pid":`, int64(r.WorkerPID))
	o.Bool(`,"new_session":`, r.NewSession, true)
	o.Int(`,"attempt":`, int64(r.Attempt))
	o.Time(`,"enqueued_at":`, r.EnqueuedAt)
	o.Time(`,"started_at":`, r.StartedAt)
	o.Time(`,"finished_at":`, r.FinishedAt)
	return o.End()
}

// StoreResult stores r and returns once the stream acked it. A duplicate
// (the same job message's result stored before, within ResultsDedup) is
// success: the first result stands. A result over the server's max payload
// is a *TooLargeError (errors.Is ErrTooLarge) and nothing is stored; store
// TooLargeResult(r, err) instead.
func (t *Topology) StoreResult(ctx context.Context, r *Result) error {
	msg, msgID, err := t.resultMsg(r)
	if err != nil {
		return err
	}
	if _, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("queue: store result %s: %w", r.ID, t.tooLarge(t.Results, "result of job "+r.ID, len(msg.Data)+headerOverhead(msgID), err))
	}
	return nil
}

// StoreResultAsync is StoreResult without waiting; the future resolves to
// the ack. Ack the job only after the future succeeds.
func (t *Topology) StoreResultAsync(r *Result) (jetstream.PubAckFuture, error) {
	msg, msgID, err := t.resultMsg(r)
	if err != nil {
		return nil, err
	}
	f, err := t.JS.PublishMsgAsync(msg, jetstream.WithMsgID(msgID))
	if err != nil {
		return nil, fmt.Errorf("queue: store result %s: %w", r.ID, t.tooLarge(t.Results, "result of job "+r.ID, len(msg.Data)+headerOverhead(msgID), err))
	}
	return f, nil
}

// GetResult returns the latest stored result of job id, or
// ErrResultNotFound.
func (t *Topology) GetResult(ctx context.Context, id string) (*Result, error) {
	return t.GetJobResult(ctx, id, 0)
}

// GetJobResult returns the result of the job message that the jobs stream
// stored at sequence seq (a submission's PubAck.Sequence) under id, or
// ErrResultNotFound. Results are filed by id; an id reused by a later job
// files that job's result under it too, and JobSeq tells them apart.
// seq 0 takes the latest result of id. A result without a JobSeq (stored by
// an older version) matches seq 0 only: nothing says whose it is.
func (t *Topology) GetJobResult(ctx context.Context, id string, seq uint64) (*Result, error) {
	return t.getJobResult(ctx, id, seq, t.Config.QueueName())
}

// getJobResult is GetJobResult for the job at seq of queue q.
func (t *Topology) getJobResult(ctx context.Context, id string, seq uint64, q string) (*Result, error) {
	if !ValidToken(id) {
		return nil, fmt.Errorf("queue: get result: job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(id))
	}
	subject := t.Config.ResultSubject(id)
	notFound := func(err error) error {
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			if seq != 0 {
				return fmt.Errorf("%w: %s (job sequence %d)", ErrResultNotFound, id, seq)
			}
			return fmt.Errorf("%w: %s", ErrResultNotFound, id)
		}
		return fmt.Errorf("queue: get result %s: %w", id, err)
	}
	m, err := t.Results.GetLastMsgForSubject(ctx, subject)
	if err != nil {
		return nil, notFound(err)
	}
	r, err := decodeResult(id, m.Data)
	if err != nil || r.matches(seq, q) {
		return r, err
	}
	// Another job reused the id (results are filed in the order they are
	// stored, not by job sequence): look through the id's results.
	for next := uint64(1); ; next = m.Sequence + 1 {
		m, err = t.Results.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			return nil, notFound(err)
		}
		if r, err := decodeResult(id, m.Data); err == nil && r.matches(seq, q) {
			return r, nil
		}
	}
}

// matches reports whether r is the result of the job message at seq of
// queue (a result without a queue is the default queue's); seq 0 takes
// any. A result without a JobSeq never matches a seq: nothing ties it to
// that job, and it may be an earlier job's under the same id (answered to
// a later job while that one still ran, it would be a wrong outcome).
func (r *Result) matches(seq uint64, queue string) bool {
	return seq == 0 || (r.JobSeq == seq && r.queueName() == queue)
}

func (r *Result) queueName() string { return NameOrDefault(r.Queue) }

// errNotEnvelope is wrapped by decodeResult's error.
var errNotEnvelope = errors.New("queue: not a valid result envelope")

func decodeResult(id string, data []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("%w: result %s: %w", errNotEnvelope, id, err)
	}
	if r.ID == "" {
		r.ID = id
	}
	return &r, nil
}

// WaitResult returns the stored result of job id, waiting for it if
// needed. nc is a core connection (it may be the JetStream one). It
// subscribes to the result subject and makes sure the server registered the
// subscription before it looks in the stream, so a result stored in between
// is seen one way or the other. A result arriving on the subscription only
// says when to look: what is returned is always what the stream stored
// (which, for a duplicate or a result the stream refused for its size, is
// not what was sent). Because the stream stores asynchronously from the core
// delivery, it also looks again on a backing-off timer: a result whose core
// delivery raced the subscription can still only be missed for a moment.
func (t *Topology) WaitResult(ctx context.Context, nc *nats.Conn, id string) (*Result, error) {
	return t.WaitJobResult(ctx, nc, id, 0)
}

// WaitJobResult is WaitResult for the job message the jobs stream stored at
// sequence seq (its submission's PubAck.Sequence; 0 for any): a result of
// another job that reused the id is skipped. See GetJobResult.
func (t *Topology) WaitJobResult(ctx context.Context, nc *nats.Conn, id string, seq uint64) (*Result, error) {
	if !ValidToken(id) {
		return nil, fmt.Errorf("queue: wait result: job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(id))
	}
	ch := make(chan *nats.Msg, 4)
	sub, err := nc.ChanSubscribe(t.Config.ResultSubject(id), ch)
	if err != nil {
		return nil, fmt.Errorf("queue: wait result %s: %w", id, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, fmt.Errorf("queue: wait result %s: %w", id, err)
	}

	q := t.Config.QueueName()
	var lastErr error
	recheck := 100 * time.Millisecond
	timer := time.NewTimer(0) // first look right away
	defer timer.Stop()
	for {
		select {
		case m := <-ch:
			r, err := decodeResult(id, m.Data)
			if err != nil || !r.matches(seq, q) {
				continue // not a result, or another job's
			}
			if seq == 0 {
				seq, q = r.JobSeq, r.queueName() // wait for this job's result now
			}
			// A result on the wire is not yet the stored one: the stream
			// may still be storing it, or refuse it (a rerun's duplicate,
			// or over the stream's max message size, when a smaller
			// stand-in is stored instead). Look in the stream now, then
			// again soon.
			recheck = time.Millisecond
			timer.Reset(0)
		case <-timer.C:
			r, err := t.getJobResult(ctx, id, seq, q)
			switch {
			case err == nil:
				return r, nil
			case errors.Is(err, ErrResultNotFound):
			case errors.Is(err, errNotEnvelope) || errors.Is(err, nats.ErrConnectionClosed) || ctx.Err() != nil:
				return nil, err
			default:
				// NATS away for a moment (a restart, a leader election,
				// a stream being made again): look again until ctx ends.
				lastErr = err
			}
			timer.Reset(recheck)
			recheck = min(recheck*2, 5*time.Second)
		case <-ctx.Done():
			if lastErr != nil {
				return nil, fmt.Errorf("queue: wait result %s: %w (the last look failed: %v)", id, ctx.Err(), lastErr)
			}
			return nil, fmt.Errorf("queue: wait result %s: %w", id, ctx.Err())
		}
	}
}
