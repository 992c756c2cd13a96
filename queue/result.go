package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
)

// Result is the envelope stored on "<prefix>.result.<id>".
type Result struct {
	ID         string          `json:"id"`
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

// resultMsgID is the dedup id of a result. A verdict uses the job id, so a
// re-run after a crash is dropped. A dead-letter verdict (exhausted,
// bad_request) uses its own id so that, after the job is replayed from the
// DLQ, the new run's result is not swallowed as a duplicate of it.
func resultMsgID(r *Result) string {
	if r.Error != nil && (r.Error.Kind == KindExhausted || r.Error.Kind == KindBadRequest || r.Error.Kind == KindPoison) {
		return r.ID + "-dead"
	}
	return r.ID
}

func (t *Topology) resultMsg(r *Result) (*nats.Msg, error) {
	if r == nil {
		return nil, errors.New("queue: store result: result is nil")
	}
	if !ValidToken(r.ID) {
		return nil, fmt.Errorf("queue: store result: job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(r.ID))
	}
	data, ok := appendResult(make([]byte, 0, len(r.Result)+320), r)
	if !ok {
		var err error
		if data, err = json.Marshal(r); err != nil {
			return nil, fmt.Errorf("queue: encode result %s: %w", r.ID, err)
		}
	}
	return &nats.Msg{Subject: t.Config.ResultSubject(r.ID), Data: data, Header: nats.Header{}}, nil
}

// appendResult appends r as the JSON object json.Marshal would write, for
// the common case, without reflection: every agent stores one per job. The
// result value is copied verbatim rather than compacted. It reports false,
// leaving r to json.Marshal, when a string needs escaping, the value is not
// valid JSON, or a time does not fit RFC 3339.
func appendResult(b []byte, r *Result) ([]byte, bool) {
	o := jsonappend.Start(b, `{`)
	o.String(`"id":`, r.ID, false)
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
// (the same job's verdict stored before, within ResultsDedup) is success:
// the first result stands.
func (t *Topology) StoreResult(ctx context.Context, r *Result) error {
	msg, err := t.resultMsg(r)
	if err != nil {
		return err
	}
	if _, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(resultMsgID(r))); err != nil {
		return fmt.Errorf("queue: store result %s: %w", r.ID, err)
	}
	return nil
}

// StoreResultAsync is StoreResult without waiting; the future resolves to
// the ack. Ack the job only after the future succeeds.
func (t *Topology) StoreResultAsync(r *Result) (jetstream.PubAckFuture, error) {
	msg, err := t.resultMsg(r)
	if err != nil {
		return nil, err
	}
	f, err := t.JS.PublishMsgAsync(msg, jetstream.WithMsgID(resultMsgID(r)))
	if err != nil {
		return nil, fmt.Errorf("queue: store result %s: %w", r.ID, err)
	}
	return f, nil
}

// GetResult returns the stored result of job id, or ErrResultNotFound.
func (t *Topology) GetResult(ctx context.Context, id string) (*Result, error) {
	if !ValidToken(id) {
		return nil, fmt.Errorf("queue: get result: job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(id))
	}
	m, err := t.Results.GetLastMsgForSubject(ctx, t.Config.ResultSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrResultNotFound, id)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: get result %s: %w", id, err)
	}
	return decodeResult(id, m.Data)
}

func decodeResult(id string, data []byte) (*Result, error) {
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("queue: result %s is not a valid envelope: %w", id, err)
	}
	if r.ID == "" {
		r.ID = id
	}
	return &r, nil
}

// WaitResult returns the result of job id, waiting for it if needed. nc is
// a core connection (it may be the JetStream one). It subscribes to the
// result subject and makes sure the server registered the subscription
// before it looks in the stream, so a result stored in between is seen one
// way or the other. Because the stream stores asynchronously from the core
// delivery, it also looks again on a backing-off timer: a result whose core
// delivery raced the subscription can still only be missed for a moment.
func (t *Topology) WaitResult(ctx context.Context, nc *nats.Conn, id string) (*Result, error) {
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

	recheck := 100 * time.Millisecond
	timer := time.NewTimer(0) // first look right away
	defer timer.Stop()
	for {
		select {
		case m := <-ch:
			return decodeResult(id, m.Data)
		case <-timer.C:
			r, err := t.GetResult(ctx, id)
			if err == nil {
				return r, nil
			}
			if !errors.Is(err, ErrResultNotFound) {
				return nil, err
			}
			timer.Reset(recheck)
			recheck = min(recheck*2, 5*time.Second)
		case <-ctx.Done():
			return nil, fmt.Errorf("queue: wait result %s: %w", id, ctx.Err())
		}
	}
}
