package dispatcher

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// The dashboard's files: HTML, CSS and JS, no build step, no network.
//
//go:embed web
var webFiles embed.FS

// sessionCookie holds the token for the page itself (the HTML shell and its
// script), HttpOnly and SameSite=Strict. The API never reads it: every data
// call carries the token as a bearer header, so a cookie cannot be used to
// make the API do anything (no CSRF).
const sessionCookie = "procfleet_session"

// pageCSP keeps the page to its own files: no inline script, no other origin.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// maxFailures caps GET /v1/failures?limit=.
const maxFailures = 500

// routeTable is the mux the routes go on (an *http.ServeMux, or a wrapper
// that records its patterns): the dashboard adds its routes and later asks
// it which optional routes exist.
type routeTable interface {
	Handle(pattern string, h http.Handler)
	HandleFunc(pattern string, h func(http.ResponseWriter, *http.Request))
	Handler(r *http.Request) (h http.Handler, pattern string)
}

// ui is the dashboard's part of httpAPI: its live state, the mux for its
// feature probe, and Serve's end for its streams.
type ui struct {
	dash *dash
	mux  routeTable
	done <-chan struct{}
}

// startDash starts the dashboard's sampler until ctx ends (or the returned
// stop is called, which waits for it). Call it before serving.
func (a *httpAPI) startDash(ctx context.Context) (stop func()) {
	a.done = ctx.Done()
	a.dash = newDash(a.c, a.log.Named("dash"), a.features)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.dash.run(ctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// uiRoutes adds the dashboard's routes to mux.
func (a *httpAPI) uiRoutes(mux routeTable) {
	a.mux = mux
	mux.HandleFunc("GET /{$}", a.page)
	mux.HandleFunc("GET /ui/{file}", a.asset)
	mux.Handle("POST /ui/login", a.guard(RightRead, a.login))
	mux.HandleFunc("POST /ui/logout", a.logout)
	mux.Handle("GET /v1/events", a.guard(RightRead, a.events))
	mux.Handle("GET /v1/jobs/{id}", a.guard(RightRead, a.jobDetail))
	mux.Handle("GET /v1/failures", a.guard(RightRead, a.failures))
}

// pageAllowed tells whether r may see the page: no token is configured, or
// its session cookie holds a token with the read right.
func (a *httpAPI) pageAllowed(r *http.Request) bool {
	if a.tokens == nil {
		return true
	}
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return false
	}
	rights, ok := a.tokens.lookup(c.Value)
	return ok && rights&RightRead != 0
}

func (a *httpAPI) page(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", pageCSP)
	w.Header().Set("Referrer-Policy", "no-referrer")
	if !a.pageAllowed(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="procfleet"`)
		a.serveFile(w, "web/login.html", http.StatusUnauthorized)
		return
	}
	if r.URL.Query().Has("signin") {
		// A tab without the token (the session cookie opened the page
		// for it) signs in on its own, without signing the others out.
		a.serveFile(w, "web/login.html", http.StatusOK)
		return
	}
	a.serveFile(w, "web/index.html", http.StatusOK)
}

// publicAssets are what the login page needs; the rest needs the session.
var publicAssets = map[string]bool{"login.js": true, "style.css": true}

func (a *httpAPI) asset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if !publicAssets[name] && !a.pageAllowed(r) {
		a.fail(w, r, http.StatusUnauthorized, "log in on / first")
		return
	}
	if strings.Contains(name, "/") || strings.HasSuffix(name, ".html") {
		http.NotFound(w, r)
		return
	}
	a.serveFile(w, "web/"+name, http.StatusOK)
}

func (a *httpAPI) serveFile(w http.ResponseWriter, name string, status int) {
	b, err := fs.ReadFile(webFiles, name)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	ct := "text/plain; charset=utf-8"
	switch {
	case strings.HasSuffix(name, ".html"):
		ct = "text/html; charset=utf-8"
	case strings.HasSuffix(name, ".js"):
		ct = "text/javascript; charset=utf-8"
	case strings.HasSuffix(name, ".css"):
		ct = "text/css; charset=utf-8"
	}
	w.Header().Set("Content-Type", ct)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// login checks the bearer token (guard) and sets it as the page's session
// cookie, so that a reload of / shows the dashboard.
func (a *httpAPI) login(w http.ResponseWriter, r *http.Request) {
	_, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: strings.TrimSpace(tok), Path: "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	writeJSON(w, struct {
		OK bool `json:"ok"`
	}{true})
}

func (a *httpAPI) logout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	w.WriteHeader(http.StatusNoContent)
}

// features says which optional routes this dispatcher serves, so that the
// page shows their panels (cancel, schedules, DLQ purge and inspect).
func (a *httpAPI) features() map[string]bool {
	probe := func(method, path string) bool {
		if a.mux == nil {
			return false
		}
		req, err := http.NewRequest(method, path, nil)
		if err != nil {
			return false
		}
		_, pattern := a.mux.Handler(req)
		return pattern != ""
	}
	return map[string]bool{
		"cancel":      probe(http.MethodDelete, "/v1/jobs/x"),
		"schedules":   probe(http.MethodGet, "/v1/schedules"),
		"dlq_purge":   probe(http.MethodDelete, "/v1/dlq"),
		"dlq_inspect": probe(http.MethodGet, "/v1/dlq/1"),
		"submit":      probe(http.MethodPost, "/v1/jobs"),
	}
}

// events streams the dashboard's state as server-sent events: "snap" once a
// second (the first one full, then deltas). With ?job=ID it also streams
// that job's "progress" reports, "attempt" ends and its "result".
func (a *httpAPI) events(w http.ResponseWriter, r *http.Request) {
	job := r.URL.Query().Get("job")
	if job != "" && !queue.ValidToken(job) {
		a.writeError(w, r, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(job)))
		return
	}
	if a.dash == nil {
		a.fail(w, r, http.StatusServiceUnavailable, "the dashboard is not running")
		return
	}
	rc := http.NewResponseController(w)
	sub := a.dash.subscribe(job)
	defer a.dash.unsubscribe(sub)
	var nsubs []*nats.Subscription
	defer func() {
		for _, s := range nsubs {
			_ = s.Unsubscribe()
		}
	}()
	// Progress reports are dropped when the client lags behind; the job's
	// result is not (the page ends its live view on it): it has a place of
	// its own, and the last one wins.
	result := make(chan []byte, 1)
	if job != "" {
		cfg := a.c.topo.Config
		s, err := a.c.nc.Subscribe(cfg.ProgressSubject(job), func(m *nats.Msg) {
			select {
			case sub.ch <- sseFrame("progress", compactJSON(m.Data)):
			default:
			}
		})
		if err == nil {
			nsubs = append(nsubs, s)
			s, err = a.c.nc.Subscribe(cfg.ResultSubject(job), func(m *nats.Msg) {
				frame := sseFrame("result", compactJSON(m.Data))
				for {
					select {
					case result <- frame:
						return
					default:
					}
					select {
					case <-result: // replaced by this later one
					default:
					}
				}
			})
		}
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		nsubs = append(nsubs, s)
		_ = a.c.nc.Flush()
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		// A client that stops reading is dropped (HTTPWriteTimeout).
		_ = rc.SetWriteDeadline(a.sseDeadline())
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	if !write([]byte(": procfleet dashboard\nretry: 2000\n\n")) {
		return
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case frame := <-sub.ch:
			if !write(frame) {
				return
			}
		case frame := <-result:
			// After what is queued before it, so that it comes last.
			for drained := false; !drained; {
				select {
				case f := <-sub.ch:
					if !write(f) {
						return
					}
				default:
					drained = true
				}
			}
			if !write(frame) {
				return
			}
		case <-keep.C:
			if !write([]byte(": keep-alive\n\n")) {
				return
			}
		}
	}
}

// compactJSON puts data on one line for an SSE data field; what is not
// JSON is sent as a JSON string.
func compactJSON(data []byte) []byte {
	if json.Valid(data) {
		var b bytes.Buffer
		if json.Compact(&b, data) == nil {
			return b.Bytes()
		}
	}
	q, _ := json.Marshal(string(data))
	return q
}

// JobView is GET /v1/jobs/{id}: what is known about one job.
type JobView struct {
	ID string `json:"id"`
	// Envelope is the job as submitted when the dispatcher has it (a dead
	// letter keeps it), else what the attempts tell of it.
	Envelope   json.RawMessage        `json:"envelope,omitempty"`
	Attempts   []queue.AttemptEvent   `json:"attempts"`
	Result     *queue.Result          `json:"result,omitempty"`
	DeadLetter *queue.DeadLetterEntry `json:"dead_letter,omitempty"`
	// State is "done", "failed", "dead", "running" or "unknown".
	State string `json:"state"`
	// RunningOn names the agent and worker that run it now, if one does.
	RunningOn string `json:"running_on,omitempty"`
}

func (a *httpAPI) jobDetail(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !queue.ValidToken(id) {
		a.writeError(w, r, badRequest("job id %q must be 1-128 characters of [A-Za-z0-9_-]", truncateID(id)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	v := JobView{ID: id, State: "unknown", Attempts: []queue.AttemptEvent{}}
	if a.dash != nil {
		if at := a.dash.attempts(func(ev *queue.AttemptEvent) bool { return ev.ID == id }); at != nil {
			v.Attempts = at
			v.State = "running"
		}
		if agentName, workerID, pid, ok := a.dash.runningOn(id); ok {
			v.State = "running"
			v.RunningOn = agentName + "/" + workerID + " (pid " + strconv.Itoa(pid) + ")"
		}
	}
	res, err := a.c.topo.GetResult(ctx, id)
	switch {
	case err == nil:
		// The agents' info may be a second old: a stored result wins.
		v.Result, v.RunningOn = res, ""
		v.State = "done"
		if !res.OK {
			v.State = "failed"
		}
	case !errors.Is(err, queue.ErrResultNotFound):
		a.writeError(w, r, err)
		return
	}
	dl, err := a.deadLetterOf(ctx, id)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if dl != nil && res != nil && (dl.StreamSeq != res.JobSeq || queue.NameOrDefault(dl.Queue) != queue.NameOrDefault(res.Queue)) {
		// Two jobs under one id (reused after the dedup window): the view
		// is the later one's.
		if res.FinishedAt.After(dl.At) {
			dl = nil
		} else {
			v.Result = nil
		}
	}
	if dl != nil {
		v.DeadLetter = dl
		v.State = "dead"
		if len(dl.Job) > 0 {
			v.Envelope = dl.Job
		}
	}
	if v.Envelope == nil && len(v.Attempts) > 0 {
		last := v.Attempts[len(v.Attempts)-1]
		v.Envelope, _ = json.Marshal(map[string]any{"id": id, "session": last.Session, "command": last.Command,
			"timeout_ms": last.TimeoutMS, "max_attempts": last.MaxAttempts, "enqueued_at": last.EnqueuedAt})
	}
	if v.State == "unknown" {
		a.fail(w, r, http.StatusNotFound, "nothing known of job "+id+" (no result, no dead letter, no recent attempt)")
		return
	}
	writeJSON(w, v)
}

// deadLetterOf returns the latest dead letter of job id, or nil.
func (a *httpAPI) deadLetterOf(ctx context.Context, id string) (*queue.DeadLetterEntry, error) {
	m, err := a.c.topo.DLQ.GetLastMsgForSubject(ctx, a.c.topo.Config.DLQSubject(id))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var e queue.DeadLetterEntry
	if err := json.Unmarshal(m.Data, &e.DeadLetter); err != nil {
		return nil, nil
	}
	e.Seq = m.Sequence
	return &e, nil
}

// failures is GET /v1/failures?kind=&limit=: the recent failed attempts,
// newest first, from the dispatcher's ring of attempt events.
func (a *httpAPI) failures(w http.ResponseWriter, r *http.Request) {
	kind := r.URL.Query().Get("kind")
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxFailures {
			a.writeError(w, r, badRequest("limit must be a number from 1 to %d", maxFailures))
			return
		}
		limit = n
	}
	kinds := map[string]int{}
	var out []queue.AttemptEvent
	if a.dash != nil {
		out = a.dash.attempts(func(ev *queue.AttemptEvent) bool {
			if ev.Outcome == "ok" {
				return false
			}
			kinds[ev.Kind]++
			return kind == "" || ev.Kind == kind
		})
	}
	slices.Reverse(out)
	if len(out) > limit {
		out = out[:limit]
	}
	if out == nil {
		out = []queue.AttemptEvent{}
	}
	writeJSON(w, struct {
		Failures []queue.AttemptEvent `json:"failures"`
		Kinds    map[string]int       `json:"kinds"`
	}{out, kinds})
}
