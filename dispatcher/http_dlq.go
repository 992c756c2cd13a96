package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

func (a *httpAPI) dlqGet(w http.ResponseWriter, r *http.Request) {
	seq, err := parseSeq(r.PathValue("seq"), "dead-letter sequence")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	m, err := a.c.topo.DLQ.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		a.fail(w, r, http.StatusNotFound, fmt.Sprintf("no dead letter at DLQ sequence %d (see GET /v1/dlq)", seq))
		return
	}
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	e := queue.DeadLetterEntry{Seq: m.Sequence}
	if err := json.Unmarshal(m.Data, &e.DeadLetter); err != nil {
		a.writeError(w, r, fmt.Errorf("dispatcher: dead letter at DLQ sequence %d is not valid: %w", seq, err))
		return
	}
	writeJSON(w, e)
}

// ReplayManyRequest is the body of POST /v1/dlq/replay.
type ReplayManyRequest struct {
	Seqs []uint64 `json:"seqs"`
}

// ReplayItem is the outcome of one dead letter of POST /v1/dlq/replay.
type ReplayItem struct {
	Seq    uint64 `json:"seq"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

// ReplayManyReply is the answer of POST /v1/dlq/replay, one item per
// sequence, in order.
type ReplayManyReply struct {
	Replayed int          `json:"replayed"`
	Failed   int          `json:"failed"`
	Items    []ReplayItem `json:"items"`
}

func (a *httpAPI) dlqReplayMany(w http.ResponseWriter, r *http.Request) {
	body, ok := a.readBody(w, r, 64<<10, fmt.Sprintf("at most %d sequences", maxBatch))
	if !ok {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req ReplayManyRequest
	if err := dec.Decode(&req); err != nil {
		a.writeError(w, r, badRequest(`body is not {"seqs": [1, 2, ...]}: %v`, err))
		return
	}
	switch {
	case len(req.Seqs) == 0:
		a.writeError(w, r, badRequest("seqs is empty"))
		return
	case len(req.Seqs) > maxBatch:
		a.writeError(w, r, badRequest("%d sequences, at most %d are allowed", len(req.Seqs), maxBatch))
		return
	}
	reply := ReplayManyReply{Items: make([]ReplayItem, 0, len(req.Seqs))}
	for _, seq := range req.Seqs {
		it := ReplayItem{Seq: seq, Status: http.StatusOK}
		var err error
		if seq == 0 {
			err = badRequest("dead-letter sequence 0 does not exist; sequences start at 1")
		} else {
			ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
			err = a.c.topo.ReplayDeadLetter(ctx, seq)
			cancel()
		}
		if err != nil {
			it.Status, it.Error = statusOf(err), err.Error()
			if it.Status == http.StatusInternalServerError {
				a.log.Error("replay", zap.Uint64("seq", seq), zap.Error(err))
				it.Error = "internal error (see the dispatcher's log)"
			}
			reply.Failed++
		} else {
			reply.Replayed++
		}
		reply.Items = append(reply.Items, it)
	}
	writeJSON(w, reply)
}

// PurgeReply is the answer of DELETE /v1/dlq.
type PurgeReply struct {
	Purged  uint64 `json:"purged"`
	Through uint64 `json:"through"` // the highest DLQ sequence the purge covered
}

// dlqPurge deletes every dead letter, or with ?through=SEQ those up to SEQ
// (the last one a page showed, so that letters that arrived since stay).
func (a *httpAPI) dlqPurge(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	var through uint64
	if s := r.URL.Query().Get("through"); s != "" {
		var err error
		if through, err = parseSeq(s, "through"); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	si, err := a.c.topo.DLQ.Info(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	// Never past the last dead letter: a purge up to a later sequence
	// moves the stream's first sequence there, and the dead letters that
	// come next would sit below it, out of every listing.
	if last := si.State.LastSeq; through == 0 || through > last {
		through = last
	}
	// The JetStream purge request itself: its answer counts what went.
	req, _ := json.Marshal(struct {
		Seq uint64 `json:"seq"`
	}{through + 1})
	msg, err := a.c.nc.RequestWithContext(ctx, "$JS.API.STREAM.PURGE."+a.c.topo.Config.DLQStream(), req)
	if err != nil {
		a.writeError(w, r, fmt.Errorf("dispatcher: purge dead letters: %w", err))
		return
	}
	var resp struct {
		Success bool   `json:"success"`
		Purged  uint64 `json:"purged"`
		Error   *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil || !resp.Success {
		why := string(msg.Data)
		if resp.Error != nil {
			why = resp.Error.Description
		}
		a.writeError(w, r, fmt.Errorf("dispatcher: purge dead letters: %s", why))
		return
	}
	writeJSON(w, PurgeReply{Purged: resp.Purged, Through: through})
}
