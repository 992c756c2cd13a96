package dispatcher

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// submitRequest publishes a submit request's job, now or, with at or in,
// through the server's scheduler.
func (c *Client) submitRequest(ctx context.Context, req *SubmitRequest) (*SubmitReply, error) {
	due, err := req.due(time.Now())
	if err != nil {
		return nil, err
	}
	var ack *jetstream.PubAck
	if due.IsZero() {
		ack, err = c.topo.Submit(ctx, req.Session, req.Job)
	} else {
		ack, err = c.topo.SubmitAt(ctx, req.Session, req.Job, due)
	}
	if err != nil {
		return nil, err
	}
	reply := &SubmitReply{ID: req.Job.ID, Duplicate: ack != nil && ack.Duplicate}
	if !due.IsZero() {
		utc := due.UTC()
		reply.Due = &utc
	}
	return reply, nil
}

// due reads at or in; the zero time means now.
func (r *SubmitRequest) due(now time.Time) (time.Time, error) {
	switch {
	case r.At != "" && r.In != "":
		return time.Time{}, badRequest("set one of at and in, not both")
	case r.At != "":
		t, err := time.Parse(time.RFC3339Nano, r.At)
		if err != nil {
			return time.Time{}, badRequest("at %q must be an RFC 3339 time like 2026-01-02T15:04:05Z", truncateID(r.At))
		}
		return t, nil
	case r.In != "":
		d, err := time.ParseDuration(r.In)
		if err != nil || d <= 0 {
			return time.Time{}, badRequest("in %q must be a positive duration like 90s or 2h", truncateID(r.In))
		}
		return now.Add(d), nil
	}
	return time.Time{}, nil
}
