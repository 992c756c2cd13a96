package dispatcher

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// ErrHTTPConfig is wrapped by Serve's errors about the HTTP settings.
var ErrHTTPConfig = errors.New("dispatcher: invalid HTTP API settings")

const (
	// submitSlack is what a submit request may carry beyond the job the
	// NATS server must accept: the wrapper and the session.
	submitSlack = 4 << 10
	// bodyReadTimeout bounds reading one request body (slow senders).
	bodyReadTimeout = 2 * time.Minute
	// apiTimeout bounds the NATS work behind one request.
	apiTimeout = 10 * time.Second
	// maxDLQList caps GET /v1/dlq?limit=.
	maxDLQList = 1000
)

// httpAPI is the HTTP face of the dispatcher.
type httpAPI struct {
	ui // the dashboard's state (http_ui.go)

	c      *Client
	log    *zap.Logger
	tokens *tokenSet // nil: no token configured, open on loopback only
	// heartbeat is the idle interval of event streams; 0: 15 s.
	heartbeat time.Duration
	// writeTimeout bounds each write of an event stream (0: the default).
	writeTimeout time.Duration
	// closing ends when the server shuts down (nil: never): it ends long
	// polls and event streams.
	closing context.Context
}

// listenHTTP opens the HTTP API's listener as cfg says: a bare ":port"
// binds 127.0.0.1; any other address than loopback needs a token.
func listenHTTP(cfg ServeConfig, tokens *tokenSet) (net.Listener, error) {
	if (cfg.HTTPTLSCert == "") != (cfg.HTTPTLSKey == "") {
		return nil, fmt.Errorf("%w: an HTTPS certificate needs its key and the key its certificate (--http-tls-cert with --http-tls-key)", ErrHTTPConfig)
	}
	addr := cli.LocalAddr(cfg.HTTPAddr)
	refuse := fmt.Errorf("%w: refusing to serve the HTTP API on %s, which is not a loopback address, without a token: "+
		"set --http-token-file or PROCFLEET_HTTP_TOKEN, or listen on 127.0.0.1", ErrHTTPConfig, addr)
	// An address that is plainly not loopback (0.0.0.0 included) is
	// refused before it is bound; a host name is checked once bound.
	if host, _, err := net.SplitHostPort(addr); err == nil && tokens == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
			return nil, refuse
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: http listen %s: %w", addr, err)
	}
	if tokens == nil && !cli.IsLoopback(ln.Addr()) {
		_ = ln.Close()
		return nil, refuse
	}
	if cfg.HTTPTLSCert != "" {
		cert, err := newCertReloader(cfg.HTTPTLSCert, cfg.HTTPTLSKey)
		if err != nil {
			_ = ln.Close()
			return nil, err
		}
		ln = tls.NewListener(ln, &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: cert.get, NextProtos: []string{"http/1.1"}})
	}
	return ln, nil
}

// newHTTPServer returns the server for the API. No WriteTimeout: long
// polls and streams are legitimate; a slow body is bounded per request.
func newHTTPServer(h http.Handler, log *zap.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          zap.NewStdLog(log.Named("http")),
	}
}

// certReloader serves the certificate in certFile/keyFile and loads it
// again when either file changes, so that a rotated certificate is used
// without a restart. A pair caught mid-rotation keeps the previous one.
type certReloader struct {
	certFile, keyFile string
	mu                sync.Mutex
	cert              *tls.Certificate
	stamp             string
}

func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: --http-tls-cert %s / --http-tls-key %s: %w", ErrHTTPConfig, certFile, keyFile, err)
	}
	r.cert, r.stamp = &cert, r.fileStamp()
	return r, nil
}

func (r *certReloader) fileStamp() string {
	var b strings.Builder
	for _, f := range []string{r.certFile, r.keyFile} {
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(&b, "%d/%d;", st.ModTime().UnixNano(), st.Size())
		}
	}
	return b.String()
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if stamp := r.fileStamp(); stamp != r.stamp {
		if cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile); err == nil {
			r.cert, r.stamp = &cert, stamp
		}
	}
	return r.cert, nil
}

func (a *httpAPI) handler() http.Handler {
	mux := a.routes()
	return a.front(mux)
}

// routes registers every route. One line a route; dispatcher/openapi.yaml
// describes each one, and TestOpenAPIMatchesRoutes holds the two together.
func (a *httpAPI) routes() *routeMux {
	mux := newRouteMux()
	// Open to all: it tells only whether the dispatcher is connected.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !a.c.nc.IsConnected() {
			http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("GET /v1/openapi.yaml", a.guard(RightAny, a.openAPI))
	mux.Handle("POST /v1/jobs", a.guard(RightSubmit, a.submit))
	mux.Handle("POST /v1/jobs/batch", a.guard(RightSubmit, a.submitBatch))
	mux.Handle("GET /v1/jobs/{id}/progress", a.guard(RightRead, a.progress))
	mux.Handle("GET /v1/results/{id}", a.guard(RightRead, a.result))
	mux.Handle("DELETE /v1/jobs/{id}", a.guard(RightSubmit, a.cancelJob))
	a.uiRoutes(mux)
	mux.Handle("GET /v1/status", a.guard(RightRead, a.status))
	mux.Handle("GET /v1/agents", a.guard(RightRead, a.agents))
	mux.Handle("GET /v1/queues", a.guard(RightRead, a.queues))
	mux.Handle("GET /v1/dlq", a.guard(RightAdmin, a.dlqList))
	mux.Handle("DELETE /v1/dlq", a.guard(RightAdmin, a.dlqPurge))
	mux.Handle("GET /v1/dlq/{seq}", a.guard(RightAdmin, a.dlqGet))
	mux.Handle("POST /v1/dlq/{seq}/replay", a.guard(RightAdmin, a.dlqReplay))
	mux.Handle("POST /v1/dlq/replay", a.guard(RightAdmin, a.dlqReplayMany))
	mux.Handle("POST /v1/schedules", a.guard(RightSubmit, a.scheduleAdd))
	mux.Handle("GET /v1/schedules", a.guard(RightRead, a.scheduleList))
	mux.Handle("DELETE /v1/schedules/{name}", a.guard(RightSubmit, a.scheduleRemove))
	return mux
}

// front applies the rules every request meets before routing.
func (a *httpAPI) front(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		// A token in the URL ends up in proxy and access logs.
		q := r.URL.Query()
		for _, k := range []string{"access_token", "token"} {
			if q.Has(k) {
				a.fail(w, r, http.StatusBadRequest, "send the token in an Authorization: Bearer header, never in the URL")
				return
			}
		}
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		// No CORS: a web page from elsewhere may not drive the API
		// with the browser's reach (a loopback API without a token).
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			a.fail(w, r, http.StatusForbidden, "cross-origin requests are not allowed")
			return
		}
		// Without a token, only this machine may call; a Host that is
		// not a loopback name is a page that rebound its DNS name to
		// 127.0.0.1.
		if a.tokens == nil && !loopbackHost(r.Host) {
			a.fail(w, r, http.StatusForbidden, "without a token the API answers requests for localhost only")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, host)
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// guard lets a request through if its bearer token has the right (or no
// token is configured: the API is then on loopback only).
func (a *httpAPI) guard(need Right, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.tokens == nil {
			h(w, r)
			return
		}
		const realm = `Bearer realm="procfleet"`
		authz := r.Header.Get("Authorization")
		if authz == "" {
			w.Header().Set("WWW-Authenticate", realm)
			a.fail(w, r, http.StatusUnauthorized, "missing bearer token (Authorization: Bearer <token>)")
			return
		}
		scheme, tok, ok := strings.Cut(authz, " ")
		tok = strings.TrimSpace(tok)
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			w.Header().Set("WWW-Authenticate", realm+`, error="invalid_request"`)
			a.fail(w, r, http.StatusUnauthorized, "the Authorization header must be `Bearer <token>`")
			return
		}
		rights, known := a.tokens.lookup(tok)
		if !known {
			w.Header().Set("WWW-Authenticate", realm+`, error="invalid_token"`)
			a.fail(w, r, http.StatusUnauthorized, "invalid token")
			return
		}
		if rights&need == 0 {
			w.Header().Set("WWW-Authenticate", realm+`, error="insufficient_scope", scope="`+need.String()+`"`)
			a.fail(w, r, http.StatusForbidden, "this token lacks the "+need.String()+" right")
			return
		}
		h(w, r)
	})
}

// apiError is an error with the HTTP status it deserves.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, msg: "bad request: " + fmt.Sprintf(format, args...)}
}

// statusOf maps an error to its HTTP status: 4xx for what the caller must
// change, 503 only for what may pass (NATS unreachable, a timeout), 500 for
// the rest.
func statusOf(err error) int {
	var ae *apiError
	var je jetstream.JetStreamError
	switch {
	case errors.As(err, &ae):
		return ae.status
	case errors.Is(err, queue.ErrBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, nats.ErrMaxPayload):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, queue.ErrResultNotFound), errors.Is(err, queue.ErrDeadLetterNotFound), errors.Is(err, queue.ErrUnknownQueue):
		return http.StatusNotFound
	case errors.Is(err, queue.ErrNotReplayable), errors.Is(err, ErrIDConflict), errors.Is(err, ErrTooManyQueues):
		return http.StatusConflict
	case errors.Is(err, queue.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, queue.ErrSchedulesUnsupported):
		// The dispatcher's set-up, not the request: it says how to turn
		// schedules on.
		return http.StatusNotImplemented
	case errors.Is(err, queue.ErrQueueFull):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrNoResponders), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrNoServers),
		errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, jetstream.ErrServerShutdown),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		return http.StatusServiceUnavailable
	case errors.As(err, &je) && je.APIError() != nil && je.APIError().Code == http.StatusServiceUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeError answers err with its status. A 500 says no more than that: the
// detail goes to the log, not to the caller.
func (a *httpAPI) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := statusOf(err)
	msg := err.Error()
	switch status {
	case http.StatusInternalServerError:
		a.log.Error("http api", zap.String("path", r.URL.Path), zap.Error(err))
		msg = "internal error (see the dispatcher's log)"
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "1")
		if !errors.Is(err, queue.ErrQueueFull) { // which says why and what to do
			msg = "NATS is unavailable or slow, retry later: " + msg
		}
	}
	a.fail(w, r, status, msg)
}

func (a *httpAPI) fail(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if status == http.StatusUnauthorized || status == http.StatusForbidden {
		a.log.Warn("http api refused", zap.Int("status", status), zap.String("method", r.Method),
			zap.String("path", r.URL.Path), zap.String("remote", r.RemoteAddr), zap.String("why", msg))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error  string `json:"error"`
		Status int    `json:"status"`
	}{msg, status})
}

func (a *httpAPI) submit(w http.ResponseWriter, r *http.Request) {
	// The job must fit in one NATS message; the server's limit can change
	// with a reconnect, so read it per request.
	limit := a.c.nc.MaxPayload() + submitSlack
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTimeout))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		a.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"request body is over %d bytes: a job must fit the NATS server's max payload (%d bytes)", limit, a.c.nc.MaxPayload()))
		return
	}
	if err != nil {
		a.fail(w, r, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	reply, err := a.c.handleSubmit(r.Context(), body)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, reply)
}

func (a *httpAPI) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	st, err := a.c.Status(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, st)
}

func (a *httpAPI) dlqList(w http.ResponseWriter, r *http.Request) {
	limit := 100
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxDLQList {
			a.writeError(w, r, badRequest("limit must be a number from 1 to %d", maxDLQList))
			return
		}
		limit = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	entries, err := a.c.topo.DeadLetters(ctx, limit)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if entries == nil {
		entries = []queue.DeadLetterEntry{}
	}
	writeJSON(w, entries)
}

func (a *httpAPI) dlqReplay(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		a.writeError(w, r, badRequest("dead-letter sequence %q must be a positive number (see GET /v1/dlq)", truncateID(r.PathValue("seq"))))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	if err := a.c.topo.ReplayDeadLetter(ctx, seq); err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, struct {
		Replayed uint64 `json:"replayed"`
	}{seq})
}

func truncateID(s string) string {
	if len(s) > 140 {
		return s[:140] + "..."
	}
	return s
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
