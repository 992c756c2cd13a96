package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"io"

	"github.com/procfleet/procfleet/queue"
)

// CancelRequest is the body of <prefix>.api.cancel: {"id": "..."}.
type CancelRequest struct {
	ID string `json:"id"`
}

// CancelReply says what a cancel found.
type CancelReply struct {
	ID string `json:"id"`
	// Finished: a result was already stored under the id when the cancel
	// was recorded: that job keeps its result. Otherwise the job ends
	// "canceled" wherever it is: not yet delivered, waiting in an agent, or
	// running (a delayed job not yet due ends at once). Either way another
	// job under the id that is already waiting, or published within the
	// dedup window after the cancel, is canceled too: a cancel names an id.
	Finished bool `json:"finished"`
}

// Cancel records a cancel of job id durably, on <prefix>.cancel.<id> (the
// cancels stream), and returns once it is stored. The caller need not know
// which agent holds the job, nor whether it has been published yet: a job
// published before the cancel, or within the jobs stream's dedup window
// after it, does not run (see queue.CancelCovers); a delayed job not yet
// due is dropped at once (queue.Topology.CancelDelayed). Cancelling is
// idempotent. The reply says whether the job had already finished, in
// which case it keeps its result.
func (c *Client) Cancel(ctx context.Context, id string) (*CancelReply, error) {
	if err := c.topo.Cancel(ctx, id); err != nil {
		return nil, err
	}
	reply := &CancelReply{ID: id}
	// A delayed job not yet due ends now (its record would not cover it if
	// it fired later than the dedup window after the cancel).
	if dropped, err := c.topo.CancelDelayed(ctx, id); err != nil {
		return nil, err
	} else if dropped {
		return reply, nil
	}
	// A failed look-up leaves Finished false: the cancel is recorded all
	// the same, and a job that has a result keeps it either way.
	if _, err := c.topo.GetResult(ctx, id); err == nil {
		reply.Finished = true
	}
	return reply, nil
}

// handleCancel serves <prefix>.api.cancel.
func (c *Client) handleCancel(ctx context.Context, body []byte) (*CancelReply, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req CancelRequest
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest("body is not a cancel request {\"id\": \"...\"}: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("body holds more than one JSON value")
	}
	if !queue.ValidToken(req.ID) {
		return nil, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(req.ID))
	}
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	return c.Cancel(cctx, req.ID)
}
