package dispatcher

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// OpenAPI is the HTTP API's OpenAPI 3.1 description, served at
// GET /v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// RightAny lets any valid token through (guard checks rights&need != 0).
const RightAny = RightAll

// ErrIDConflict is wrapped by a submit whose job id was taken, within the
// jobs stream's dedup window, by a job with another body or session: the
// new job would be dropped as a duplicate, so it is refused (409) instead.
var ErrIDConflict = errors.New("dispatcher: job id already used by another job")

const (
	// maxBatch caps the jobs of one POST /v1/jobs/batch and the sequences
	// of one POST /v1/dlq/replay.
	maxBatch = 1000
	// maxBatchBody bounds the body of POST /v1/jobs/batch (unless one job
	// of the server's max payload needs more).
	maxBatchBody = 32 << 20
	// maxWait caps ?wait= of GET /v1/results/{id}.
	maxWait = 60 * time.Second
	// defaultSSEHeartbeat is how often an idle progress stream sends a
	// comment, so that proxies keep it open and a gone client is noticed.
	defaultSSEHeartbeat = 15 * time.Second
)

// routeMux is an http.ServeMux that remembers its patterns, so that a test
// can hold the OpenAPI description against the routes actually served.
type routeMux struct {
	*http.ServeMux
	patterns []string
}

func newRouteMux() *routeMux { return &routeMux{ServeMux: http.NewServeMux()} }

func (m *routeMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

func (m *routeMux) HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request)) {
	m.Handle(pattern, http.HandlerFunc(h))
}

// Patterns returns the registered patterns ("METHOD /path") in order.
func (m *routeMux) Patterns() []string { return append([]string(nil), m.patterns...) }

// HTTPRoutes lists the HTTP API's route patterns ("GET /v1/status", ...),
// as registered on its mux.
func HTTPRoutes() []string { return (&httpAPI{log: zap.NewNop()}).routes().Patterns() }

func (a *httpAPI) openAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(OpenAPI)
}

// checkDuplicate is called for a submit the jobs stream took for a
// duplicate of the job at seq. The same job again is an idempotent retry;
// another body or session under the same id would be dropped without a
// word, so it is an ErrIDConflict. Once the first job has left the stream
// (it ran) the two cannot be compared and the retry is taken as such.
func (c *Client) checkDuplicate(ctx context.Context, req *SubmitRequest, seq uint64) error {
	m, err := c.topo.Jobs.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("dispatcher: compare duplicate of job %s: %w", req.Job.ID, err)
	}
	orig, err := queue.ParseJob(m.Subject, m.Header, m.Data, m.Sequence, c.topo.Config)
	if err != nil || orig.Session != req.Session || !sameJSON(m.Data, req.Job) {
		return fmt.Errorf("%w: job id %s is taken by a waiting job with another body or session (job sequence %d); "+
			"within the dedup window (%s) this job would be dropped: choose a new id",
			ErrIDConflict, req.Job.ID, seq, c.topo.Config.DedupWindow)
	}
	return nil
}

// sameJSON reports whether stored (a job body) and job encode the same JSON
// value, whatever the spacing and key order.
func sameJSON(stored []byte, job *queue.Job) bool {
	mine, err := json.Marshal(job)
	if err != nil {
		return false
	}
	var x, y any
	if json.Unmarshal(stored, &x) != nil || json.Unmarshal(mine, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// BatchRequest is the body of POST /v1/jobs/batch.
type BatchRequest struct {
	Jobs []json.RawMessage `json:"jobs"`
}

// BatchItem is the outcome of one job of a batch: Status 200 with its ID
// and Seq, or an error status with Error. Nothing is published for an item
// that failed validation.
type BatchItem struct {
	Index     int    `json:"index"`
	Status    int    `json:"status"`
	ID        string `json:"id,omitempty"`
	Seq       uint64 `json:"seq,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Error     string `json:"error,omitempty"`
}

// BatchReply is the answer of POST /v1/jobs/batch: one item per job, in
// order.
type BatchReply struct {
	Accepted int         `json:"accepted"`
	Failed   int         `json:"failed"`
	Items    []BatchItem `json:"items"`
}

// readBody reads a request body of at most limit bytes, answering 413 or
// 400 itself when it cannot.
func (a *httpAPI) readBody(w http.ResponseWriter, r *http.Request, limit int64, what string) ([]byte, bool) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		a.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body is over %d bytes: %s", limit, what))
		return nil, false
	}
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, "reading the request body: "+err.Error())
		return nil, false
	}
	return body, true
}

func (a *httpAPI) submitBatch(w http.ResponseWriter, r *http.Request) {
	maxPayload := a.c.nc.MaxPayload()
	// Read whole before anything is published: bounded, and never below
	// what one job of the largest size needs.
	limit := max(maxBatchBody, maxPayload+submitSlack)
	body, ok := a.readBody(w, r, limit, fmt.Sprintf("a batch holds at most %d bytes (and %d jobs); send big jobs one by one", limit, maxBatch))
	if !ok {
		return
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req BatchRequest
	if err := dec.Decode(&req); err != nil {
		a.writeError(w, r, badRequest(`body is not a batch {"jobs": [{"session": ..., "job": {...}}, ...]}: %v`, err))
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		a.writeError(w, r, badRequest("body holds more than one JSON value"))
		return
	}
	switch {
	case len(req.Jobs) == 0:
		a.writeError(w, r, badRequest("the batch holds no job"))
		return
	case len(req.Jobs) > maxBatch:
		a.writeError(w, r, badRequest("the batch holds %d jobs, at most %d are allowed", len(req.Jobs), maxBatch))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	reply := BatchReply{Items: make([]BatchItem, len(req.Jobs))}
	type pending struct {
		i   int
		req *SubmitRequest
		f   jetstream.PubAckFuture
	}
	var inflight []pending
	itemErr := func(i int, err error) {
		status, msg := statusOf(err), err.Error()
		if status == http.StatusInternalServerError {
			a.log.Error("batch submit", zap.Int("index", i), zap.Error(err))
			msg = "internal error (see the dispatcher's log)"
		}
		reply.Items[i] = BatchItem{Index: i, Status: status, Error: msg}
	}
	// Validate and publish every item without waiting, then collect the
	// acks: one round trip for the whole batch.
	for i, raw := range req.Jobs {
		sr, err := parseSubmit(raw)
		if err == nil && int64(len(raw)) > maxPayload {
			err = &apiError{status: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf(
				"job of %d bytes is over the NATS server's max payload (%d bytes)", len(raw), maxPayload)}
		}
		if err != nil {
			itemErr(i, err)
			continue
		}
		f, err := a.c.topo.SubmitAsync(sr.Session, sr.Job)
		if err != nil {
			itemErr(i, err)
			continue
		}
		inflight = append(inflight, pending{i, sr, f})
	}
	for _, p := range inflight {
		select {
		case ack := <-p.f.Ok():
			item := BatchItem{Index: p.i, Status: http.StatusOK, ID: p.req.Job.ID, Seq: ack.Sequence, Duplicate: ack.Duplicate}
			if ack.Duplicate {
				if err := a.c.checkDuplicate(ctx, p.req, ack.Sequence); err != nil {
					itemErr(p.i, err)
					continue
				}
			}
			reply.Items[p.i] = item
		case err := <-p.f.Err():
			itemErr(p.i, fmt.Errorf("queue: submit job %s: %w", p.req.Job.ID, err))
		case <-ctx.Done():
			// Unknown: it may yet be stored. 503 says to retry, and a
			// retry with the same id is deduplicated.
			itemErr(p.i, fmt.Errorf("submit job %s: no ack in time: %w", p.req.Job.ID, ctx.Err()))
		}
	}
	for _, it := range reply.Items {
		if it.Status == http.StatusOK {
			reply.Accepted++
		} else {
			reply.Failed++
		}
	}
	writeJSON(w, reply)
}

// parseSeq reads a positive job or dead-letter sequence.
func parseSeq(s, what string) (uint64, error) {
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil || seq == 0 {
		return 0, badRequest("%s %q must be a positive number", what, truncateID(s))
	}
	return seq, nil
}

// parseWait reads ?wait=: a Go duration ("30s", "1m") or whole seconds
// ("30"), at most maxWait.
func parseWait(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.Atoi(s)
		if nerr != nil {
			return 0, badRequest("wait %q must be a duration like 30s, or seconds", truncateID(s))
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d > maxWait {
		return 0, badRequest("wait %s must be between 0s and %s: poll again for longer", d, maxWait)
	}
	return d, nil
}

func (a *httpAPI) result(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !queue.ValidToken(id) {
		a.writeError(w, r, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(id)))
		return
	}
	q := r.URL.Query()
	var seq uint64
	if s := q.Get("seq"); s != "" {
		var err error
		if seq, err = parseSeq(s, "job sequence (seq)"); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	var wait time.Duration
	if s := q.Get("wait"); s != "" {
		var err error
		if wait, err = parseWait(s); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	notFound := func() {
		msg := "no result for job " + id
		if seq != 0 {
			msg += " at job sequence " + strconv.FormatUint(seq, 10)
		}
		if wait > 0 {
			msg += " within " + wait.String()
		}
		a.fail(w, r, http.StatusNotFound, msg+" (not finished, unknown, or expired)")
	}
	var res *queue.Result
	var err error
	if wait == 0 {
		ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
		defer cancel()
		res, err = a.c.topo.GetJobResult(ctx, id, seq)
	} else {
		// The long poll ends with the request: a client that goes away
		// cancels it.
		sctx, stop := a.streamContext(r)
		defer stop()
		ctx, cancel := context.WithTimeout(sctx, wait)
		defer cancel()
		res, err = a.c.topo.WaitJobResult(ctx, a.c.nc, id, seq)
		if err != nil && errors.Is(err, context.DeadlineExceeded) && sctx.Err() == nil {
			notFound()
			return
		}
	}
	if errors.Is(err, queue.ErrResultNotFound) {
		notFound()
		return
	}
	if err != nil {
		if r.Context().Err() != nil {
			return // the client is gone
		}
		if a.closing != nil && a.closing.Err() != nil {
			w.Header().Set("Retry-After", "1")
			a.fail(w, r, http.StatusServiceUnavailable, "the dispatcher is shutting down, retry")
			return
		}
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, res)
}

// progress streams a job's progress reports as server-sent events:
//
//	: subscribed                 (the stream is live: submit now, miss nothing)
//	event: progress
//	data: <the worker's progress value>
//
//	event: result
//	data: <the stored result>    (then the stream ends)
//
// and a ": heartbeat" comment every ServeConfig.HTTPHeartbeat (15 s).
// Progress is core NATS: reports published before the stream opened are
// not replayed. A job whose result is already stored gets only the result.
func (a *httpAPI) progress(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !queue.ValidToken(id) {
		a.writeError(w, r, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(id)))
		return
	}
	var seq uint64
	if s := r.URL.Query().Get("seq"); s != "" {
		var err error
		if seq, err = parseSeq(s, "job sequence (seq)"); err != nil {
			a.writeError(w, r, err)
			return
		}
	}
	ctx, stop := a.streamContext(r)
	defer stop()
	cfg := a.c.topo.Config
	progress := make(chan *nats.Msg, 256)
	results := make(chan *nats.Msg, 4)
	psub, err := a.c.nc.ChanSubscribe(cfg.ProgressSubject(id), progress)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	defer func() { _ = psub.Unsubscribe() }()
	rsub, err := a.c.nc.ChanSubscribe(cfg.ResultSubject(id), results)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	defer func() { _ = rsub.Unsubscribe() }()
	fctx, cancel := context.WithTimeout(ctx, apiTimeout)
	err = a.c.nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	// Subscribed first, then looked: a result stored in between is seen.
	lookup := func() (*queue.Result, error) {
		lctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		res, err := a.c.topo.GetJobResult(lctx, id, seq)
		if errors.Is(err, queue.ErrResultNotFound) {
			return nil, nil
		}
		return res, err
	}
	res, err := lookup()
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(format string, args ...any) bool {
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	sendResult := func(res *queue.Result) {
		data, err := json.Marshal(res)
		if err != nil {
			a.log.Error("progress stream: encode result", zap.String("job", id), zap.Error(err))
			return
		}
		send("event: result\ndata: %s\n\n", data)
	}
	if res != nil {
		sendResult(res)
		return
	}
	if !send(": subscribed\n\n") {
		return
	}
	every := a.heartbeat
	if every <= 0 {
		every = defaultSSEHeartbeat
	}
	heartbeat := time.NewTicker(every)
	defer heartbeat.Stop()
	// A result on the wire says when to look; the stream's copy is what
	// is sent. Looked for again on a backing-off timer, as WaitJobResult.
	recheck := 100 * time.Millisecond
	timer := time.NewTimer(recheck)
	defer timer.Stop()
	for {
		select {
		case m := <-progress:
			var buf bytes.Buffer
			if json.Compact(&buf, m.Data) != nil {
				// Not JSON: sent as a JSON string, one line whatever it holds.
				b, _ := json.Marshal(string(m.Data))
				buf.Reset()
				buf.Write(b)
			}
			if !send("event: progress\ndata: %s\n\n", buf.Bytes()) {
				return
			}
		case <-results:
			recheck = time.Millisecond
			timer.Reset(0)
		case <-timer.C:
			res, err := lookup()
			if err != nil {
				if ctx.Err() == nil {
					a.log.Warn("progress stream: look up result", zap.String("job", id), zap.Error(err))
				}
			} else if res != nil {
				sendResult(res)
				return
			}
			recheck = min(recheck*2, 5*time.Second)
			timer.Reset(recheck)
		case <-heartbeat.C:
			if !send(": heartbeat\n\n") {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// AgentsReply is the answer of GET /v1/agents.
type AgentsReply struct {
	Agents []queue.AgentInfo `json:"agents"`
	At     time.Time         `json:"at"`
}

func (a *httpAPI) agents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	agents, err := a.c.topo.ListAgents(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if agents == nil {
		agents = []queue.AgentInfo{}
	}
	writeJSON(w, AgentsReply{Agents: agents, At: time.Now().UTC()})
}

// QueueInfo is one queue's state in GET /v1/queues.
type QueueInfo struct {
	Name string `json:"name"`
	// Pending are jobs not yet delivered to any agent; AckPending are
	// running (delivered, not yet acked); Redelivered have been delivered
	// more than once.
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// Waiting is every job still in the stream (pending and running).
	Waiting uint64 `json:"waiting"`
	// Oldest is when the oldest job still in the stream was enqueued
	// (absent when there is none), OldestAgeMS its age then.
	Oldest      *time.Time `json:"oldest,omitempty"`
	OldestAgeMS int64      `json:"oldest_age_ms"`
	// Agents serving this queue, and the partitions without an owner.
	Agents     int `json:"agents"`
	Unassigned int `json:"unassigned_partitions"`
}

// QueuesReply is the answer of GET /v1/queues.
type QueuesReply struct {
	Queues      []QueueInfo `json:"queues"`
	DeadLetters uint64      `json:"dead_letters"`
	At          time.Time   `json:"at"`
}

// DefaultQueue is the name of the queue of jobs that name none.
const DefaultQueue = "default"

// Queues reports each queue's depth, oldest job and agents. Today every
// job is in the default queue; named queues add one entry each.
func (c *Client) Queues(ctx context.Context) (*QueuesReply, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	q := QueueInfo{Name: DefaultQueue, Agents: len(st.Agents), Waiting: st.Pending}
	for _, p := range append(st.Partitions, PartitionStatus{Owner: "any", QueueDepth: st.Anonymous}) {
		q.Pending += p.Pending
		q.AckPending += p.AckPending
		q.Redelivered += p.Redelivered
		if p.Owner == "" {
			q.Unassigned++
		}
	}
	si, err := c.topo.Jobs.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: jobs stream: %w", err)
	}
	if si.State.Msgs > 0 && !si.State.FirstTime.IsZero() {
		t := si.State.FirstTime.UTC()
		q.Oldest = &t
		q.OldestAgeMS = max(0, st.At.Sub(t).Milliseconds())
	}
	return &QueuesReply{Queues: []QueueInfo{q}, DeadLetters: st.DeadLetters, At: st.At.UTC()}, nil
}

func (a *httpAPI) queues(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	qs, err := a.c.Queues(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, qs)
}

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
	} else {
		si, err := a.c.topo.DLQ.Info(ctx)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		through = si.State.LastSeq
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

// streamContext is the request's context, also ended when the server shuts
// down: long polls and event streams never go idle by themselves, so
// http.Server.Shutdown would otherwise wait for them in vain.
func (a *httpAPI) streamContext(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(r.Context())
	if a.closing == nil {
		return ctx, cancel
	}
	stop := context.AfterFunc(a.closing, cancel)
	return ctx, func() { stop(); cancel() }
}
