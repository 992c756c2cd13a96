package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// Version is reported by the micro service.
const Version = "0.1.0"

// ServiceName is the NATS micro service name of the dispatcher.
const ServiceName = "procfleet"

// ServeConfig configures Serve.
type ServeConfig struct {
	// Queue is the NATS contract. Zero fields take queue's defaults.
	Queue queue.Config
	// HTTPAddr, when set, also serves the API over HTTP (the routes of
	// HTTPRoutes, described in openapi.yaml). A bare ":port" binds
	// 127.0.0.1. Default: none.
	HTTPAddr string
	// HTTPTokens are the bearer tokens the HTTP API accepts, each with its
	// rights (see ReadHTTPTokenFile). Default none: the API is then open to
	// every caller, and Serve refuses any address but a loopback one.
	// /healthz needs no token.
	HTTPTokens []HTTPToken
	// HTTPTLSCert and HTTPTLSKey, when set, serve HTTPS with this PEM
	// certificate and key (re-read when the files change). Default: plain
	// HTTP.
	HTTPTLSCert, HTTPTLSKey string
	// HTTPHeartbeat is how often an idle event stream (GET
	// /v1/jobs/{id}/progress) sends a comment, so that proxies keep it
	// open and a client that left is noticed. Default 15s.
	HTTPHeartbeat time.Duration
	// HTTPWriteTimeout bounds each write of an event stream (progress,
	// the dashboard's events): a client that reads nothing for this long
	// is dropped, with what was held for it. Default 30s.
	HTTPWriteTimeout time.Duration
	// Logger receives the server's logs. Default: no logging.
	Logger *zap.Logger
	// Ready, when set, is called once the service is up.
	Ready func()
	// HTTPListening, when set, is called with the HTTP API's base URL
	// (http://127.0.0.1:PORT or https://...) once it listens, before Ready.
	HTTPListening func(url string)
	// Registerer, when set, receives the fleet metrics (see
	// Client.Metrics). Default: none.
	Registerer prometheus.Registerer
	// UnroutableAfter, when positive, dead-letters as "unroutable" (a
	// result and a dead letter) every job that has waited this long in a
	// queue that no live agent has served for this long either (as this
	// dispatcher saw it). Default 0: such jobs wait.
	UnroutableAfter time.Duration
	// MaxQueues bounds the queues submits may create on demand (0:
	// DefaultMaxQueues); declaring one (AddQueue) is not bounded.
	MaxQueues int
}

// SubmitRequest is the body of the submit endpoint.
type SubmitRequest struct {
	// Queue is the job's queue; default "default". A queue that does not
	// exist yet is created.
	Queue   string     `json:"queue,omitempty"`
	Session string     `json:"session,omitempty"`
	Job     *queue.Job `json:"job"`
	// At (RFC 3339) or In (a Go duration, "90s") delays the job: it is
	// delivered then, and not before. At most one. See submit_delay.go.
	At string `json:"at,omitempty"`
	In string `json:"in,omitempty"`
}

// SubmitReply is the submit endpoint's answer.
type SubmitReply struct {
	ID string `json:"id"`
	// Queue is the queue the job went to ("default" for the old subjects).
	Queue string `json:"queue"`
	// Seq is the job's sequence in the jobs stream (for a duplicate, the
	// sequence of the job it duplicates): pass it to GET
	// /v1/results/{id}?seq= so that a later job reusing the id is never
	// taken for this one. A delayed job's is its delay message's: it
	// finds the job's result if it was canceled before it was due, while
	// the job that fires gets a sequence of its own.
	Seq       uint64 `json:"seq"`
	Duplicate bool   `json:"duplicate,omitempty"`
	// Due is when a delayed job will be delivered.
	Due *time.Time `json:"due,omitempty"`
}

// Serve ensures the topology, serves the submit, cancel and status API as
// the NATS micro service "procfleet" (subjects <prefix>.api.submit,
// <prefix>.api.cancel and <prefix>.api.status) and over HTTP where asked, and moves jobs whose
// deliveries ran out to the dead-letter stream. It blocks until ctx ends.
func Serve(ctx context.Context, nc *nats.Conn, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("dispatcher")
	// Check the HTTP settings before touching NATS: a bad token file or a
	// refused address is a start-up error, not a half-started service.
	var tokens *tokenSet
	if len(cfg.HTTPTokens) > 0 {
		var err error
		if tokens, err = newTokenSet(cfg.HTTPTokens); err != nil {
			return err
		}
	}
	var ln net.Listener
	if cfg.HTTPAddr != "" {
		var err error
		if ln, err = listenHTTP(cfg, tokens); err != nil {
			return err
		}
		defer ln.Close()
	}
	c, err := EnsureClient(ctx, nc, cfg.Queue)
	if err != nil {
		return err
	}
	c.queues.max = cfg.MaxQueues
	qcfg := c.topo.Config
	if cfg.Queue.MemoryConsumers && !qcfg.MemoryConsumers {
		log.Warn("memory-stored consumers asked for, but the jobs stream was created without them: its consumers stay file-stored",
			zap.String("stream", qcfg.JobsStream()))
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(c.Metrics()); err != nil {
			return fmt.Errorf("dispatcher: metrics: %w", err)
		}
		defer cfg.Registerer.Unregister(c.Metrics())
	}

	// The advisory watcher stops with ctx.
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	if err := c.topo.WatchMaxDeliveries(wctx, nc, "dispatcher", log); err != nil {
		return fmt.Errorf("dispatcher: dead-letter watcher: %w", err)
	}
	if c.topo.SchedulesAllowed() {
		if err := c.topo.WatchDelays(wctx, nc, log); err != nil {
			return fmt.Errorf("dispatcher: delayed jobs watcher: %w", err)
		}
	}
	if cfg.MaxQueues < 0 {
		return fmt.Errorf("dispatcher: MaxQueues cannot be negative, got %d", cfg.MaxQueues)
	}
	if cfg.UnroutableAfter < 0 {
		return fmt.Errorf("dispatcher: UnroutableAfter cannot be negative, got %s", cfg.UnroutableAfter)
	}
	// The other queues' watchers, and unroutable jobs.
	sw := &sweeper{c: c, after: cfg.UnroutableAfter, log: log, watched: map[string]bool{}, unserved: map[string]time.Time{}}
	sweepDone := make(chan struct{})
	go func() {
		defer close(sweepDone)
		sw.run(wctx)
	}()
	defer func() {
		cancelWatch()
		<-sweepDone
	}()

	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "procfleet dispatcher: submit jobs, fleet status",
	})
	if err != nil {
		return fmt.Errorf("dispatcher: micro service: %w", err)
	}
	defer func() { _ = svc.Stop() }()
	g := svc.AddGroup(qcfg.Prefix + ".api")
	if err := g.AddEndpoint("submit", apiHandler(log, "submit", func(data []byte) (any, error) { return c.handleSubmit(ctx, data) })); err != nil {
		return err
	}
	if err := g.AddEndpoint("cancel", apiHandler(log, "cancel", func(data []byte) (any, error) { return c.handleCancel(ctx, data) })); err != nil {
		return err
	}
	if err := g.AddEndpoint("status", micro.HandlerFunc(func(req micro.Request) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := c.Status(sctx)
		if err != nil {
			_ = req.Error("500", err.Error(), nil)
			return
		}
		_ = req.RespondJSON(st)
	})); err != nil {
		return err
	}

	var httpErr chan error
	var srv *http.Server
	if ln != nil {
		closing, closeStreams := context.WithCancel(context.Background())
		defer closeStreams()
		api := &httpAPI{c: c, log: log.Named("http"), tokens: tokens, heartbeat: cfg.HTTPHeartbeat, writeTimeout: cfg.HTTPWriteTimeout, closing: closing}
		srv = newHTTPServer(api.handler(), log)
		srv.RegisterOnShutdown(closeStreams)
		httpErr = make(chan error, 1)
		defer api.startDash(wctx)()
		go func() { httpErr <- srv.Serve(ln) }()
		scheme := "http"
		if cfg.HTTPTLSCert != "" {
			scheme = "https"
		}
		base := scheme + "://" + ln.Addr().String()
		log.Info("http api", zap.String("url", base), zap.Int("tokens", len(cfg.HTTPTokens)), zap.Bool("open", tokens == nil))
		if cfg.HTTPListening != nil {
			cfg.HTTPListening(base)
		}
	}
	log.Info("dispatcher serving", zap.String("nats", nc.ConnectedUrlRedacted()), zap.String("prefix", qcfg.Prefix))
	if cfg.Ready != nil {
		cfg.Ready()
	}
	select {
	case <-ctx.Done():
	case err := <-httpErr:
		return fmt.Errorf("dispatcher: http: %w", err)
	}
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-httpErr
	}
	return nil
}

func (c *Client) handleSubmit(ctx context.Context, body []byte) (*SubmitReply, error) {
	req, err := parseSubmit(body)
	if err != nil {
		return nil, err
	}
	return c.submitParsed(ctx, req)
}

// submitParsed publishes one decoded submit request: the one path of the
// NATS API, POST /v1/jobs and each job of POST /v1/jobs/batch.
func (c *Client) submitParsed(ctx context.Context, req *SubmitRequest) (*SubmitReply, error) {
	due, err := req.due(time.Now())
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if !due.IsZero() {
		if q := req.Queue; q != "" && q != queue.DefaultQueue {
			return nil, badRequest("a delayed job (at/in) goes to the default queue only, not to queue %q", q)
		}
		return c.submitDelayed(sctx, req, due)
	}
	t, err := c.Queue(sctx, req.Queue)
	if err != nil {
		return nil, err
	}
	ack, err := t.Submit(sctx, req.Session, req.Job)
	if err != nil {
		return nil, err
	}
	reply := &SubmitReply{ID: req.Job.ID, Queue: t.Config.QueueName(), Seq: ack.Sequence, Duplicate: ack.Duplicate}
	if ack.Duplicate {
		if _, err := checkDuplicate(sctx, t, req, ack.Sequence); err != nil {
			return nil, err
		}
	}
	return reply, nil
}

// parseSubmit decodes one submit request, strictly: a misspelt field
// ("sesion") must not quietly submit another job than the one meant.
func parseSubmit(body []byte) (*SubmitRequest, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var req SubmitRequest
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest("body is not a submit request {\"queue\": ..., \"session\": ..., \"job\": {...}}: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("body holds more than one JSON value")
	}
	if req.Job == nil {
		return nil, badRequest("missing job")
	}
	return &req, nil
}

// apiHandler answers a micro request with handle's reply, or with the
// error's HTTP-style status code; an internal error is logged, and the
// caller is told only to look at the log.
func apiHandler(log *zap.Logger, name string, handle func(data []byte) (any, error)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		reply, err := handle(req.Data())
		if err != nil {
			msg := err.Error()
			code := statusOf(err)
			if code == http.StatusInternalServerError {
				log.Error(name, zap.Error(err))
				msg = "internal error (see the dispatcher's log)"
			}
			_ = req.Error(strconv.Itoa(code), msg, nil)
			return
		}
		_ = req.RespondJSON(reply)
	})
}
