package dispatcher

import (
	"context"
	"strings"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// submitDelayed publishes a submit request's job through the server's
// scheduler, to be delivered at due (see queue.Topology.SubmitAt).
func (c *Client) submitDelayed(ctx context.Context, req *SubmitRequest, due time.Time) (*SubmitReply, error) {
	ack, err := c.topo.SubmitAt(ctx, req.Session, req.Job, due)
	if err != nil {
		return nil, err
	}
	utc := due.UTC()
	reply := &SubmitReply{ID: req.Job.ID, Queue: c.topo.Config.QueueName(), Due: &utc}
	if ack == nil {
		return reply, nil
	}
	reply.Seq, reply.Duplicate = ack.Sequence, ack.Duplicate
	if ack.Duplicate {
		// The same job again is a retry; the reply says when the job
		// first submitted is due, not this request's time.
		m, err := checkDuplicate(ctx, c.topo, req, ack.Sequence)
		if err != nil {
			return nil, err
		}
		if m != nil {
			if at, ok := strings.CutPrefix(m.Header.Get(queue.ScheduleHeader), "@at "); ok {
				if stored, err := time.Parse(time.RFC3339Nano, at); err == nil {
					stored = stored.UTC()
					reply.Due = &stored
				}
			}
		}
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
