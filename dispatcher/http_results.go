package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// defaultSSEWriteTimeout is ServeConfig.HTTPWriteTimeout's default.
const defaultSSEWriteTimeout = 30 * time.Second

// sseDeadline is when a write of an event stream begun now must be done.
func (a *httpAPI) sseDeadline() time.Time {
	d := a.writeTimeout
	if d <= 0 {
		d = defaultSSEWriteTimeout
	}
	return time.Now().Add(d)
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

// jobQueue is the topology of the request's ?queue= (absent: the default
// queue). A job's sequence counts in its queue's stream, so a result
// matches ?seq= only in the queue the job was submitted to, which the
// submit's reply names.
func (a *httpAPI) jobQueue(ctx context.Context, r *http.Request) (*queue.Topology, error) {
	name := r.URL.Query().Get("queue")
	if name == "" {
		return a.c.topo, nil
	}
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	return a.c.knownQueue(ctx, name)
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
	t, err := a.jobQueue(r.Context(), r)
	if err != nil {
		a.writeError(w, r, err)
		return
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
	if wait == 0 {
		ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
		defer cancel()
		res, err = t.GetJobResult(ctx, id, seq)
	} else {
		// The long poll ends with the request: a client that goes away
		// cancels it.
		sctx, stop := a.streamContext(r)
		defer stop()
		ctx, cancel := context.WithTimeout(sctx, wait)
		defer cancel()
		res, err = t.WaitJobResult(ctx, a.c.nc, id, seq)
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
	t, err := a.jobQueue(r.Context(), r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx, stop := a.streamContext(r)
	defer stop()
	cfg := t.Config
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
		res, err := t.GetJobResult(lctx, id, seq)
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
		// A client that stops reading is dropped: the reports held for it
		// (up to the subscription's 256) would be held as long as it stays.
		_ = rc.SetWriteDeadline(a.sseDeadline())
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
