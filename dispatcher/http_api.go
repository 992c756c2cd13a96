package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

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
	// batchWorkers is how many jobs of a batch are in flight at once.
	batchWorkers = 32
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

// checkDuplicate is called for a submit the jobs stream of t (the job's
// queue) took for a duplicate of the message at seq: a waiting job, or a
// delayed job's schedule. The same job again is an idempotent retry;
// another body or session under the same id would be dropped without a
// word, so it is an ErrIDConflict. Once the first job has left the stream
// (it ran) the two cannot be compared and the retry is taken as such. It
// returns the message compared against, nil when there was none.
func checkDuplicate(ctx context.Context, t *queue.Topology, req *SubmitRequest, seq uint64) (*jetstream.RawStreamMsg, error) {
	m, err := t.Jobs.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dispatcher: compare duplicate of job %s: %w", req.Job.ID, err)
	}
	var session string
	same := false
	if target := m.Header.Get(queue.ScheduleTargetHeader); target != "" {
		// A delayed job's schedule: the job's subject is its target.
		_, session, same = t.Config.ParseJobSubject(target)
	} else if orig, err := queue.ParseJob(m.Subject, m.Header, m.Data, m.Sequence, t.Config); err == nil {
		session, same = orig.Session, true
	}
	if !same || session != req.Session || !sameJSON(m.Data, req.Job) {
		return nil, fmt.Errorf("%w: job id %s is taken by a waiting job with another body or session (job sequence %d); "+
			"within the dedup window (%s) this job would be dropped: choose a new id",
			ErrIDConflict, req.Job.ID, seq, t.Config.DedupWindow)
	}
	return m, nil
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
	reply := BatchReply{Items: make([]BatchItem, len(req.Jobs))}
	itemErr := func(i int, err error) {
		status, msg := statusOf(err), err.Error()
		if status == http.StatusInternalServerError {
			a.log.Error("batch submit", zap.Int("index", i), zap.Error(err))
			msg = "internal error (see the dispatcher's log)"
		}
		reply.Items[i] = BatchItem{Index: i, Status: status, Error: msg}
	}
	// Each job takes the single submit's path (so that whatever a submit
	// request may say applies to a batch's jobs alike), batchWorkers at a
	// time; nothing is published for a job that does not parse. Jobs that
	// name the same id go in their order: the first is stored, the next
	// are its duplicates (or conflicts), as if sent one by one.
	var wg sync.WaitGroup
	sem := make(chan struct{}, batchWorkers)
	last := map[string]chan struct{}{} // per job id: done of its latest item
	for i, raw := range req.Jobs {
		sr, err := parseSubmit(raw)
		if err != nil {
			itemErr(i, err)
			continue
		}
		var prev <-chan struct{}
		done := make(chan struct{})
		if id := sr.Job.ID; id != "" {
			prev = last[id]
			last[id] = done
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { close(done); <-sem; wg.Done() }()
			if prev != nil {
				<-prev
			}
			sub, err := a.c.submitParsed(r.Context(), sr)
			if err != nil {
				itemErr(i, err)
				return
			}
			reply.Items[i] = BatchItem{Index: i, Status: http.StatusOK, ID: sub.ID, Seq: sub.Seq, Duplicate: sub.Duplicate}
		}()
	}
	wg.Wait()
	for _, it := range reply.Items {
		if it.Status == http.StatusOK {
			reply.Accepted++
		} else {
			reply.Failed++
		}
	}
	writeJSON(w, reply)
}
