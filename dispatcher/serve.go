package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
	// HTTPAddr, when set, also serves the API over HTTP (POST /v1/jobs,
	// GET /v1/status, GET /healthz). Default: none.
	HTTPAddr string
	// Logger receives the server's logs. Default: no logging.
	Logger *zap.Logger
	// Ready, when set, is called once the service is up.
	Ready func()
	// Registerer, when set, receives the fleet metrics (see
	// Client.Metrics). Default: none.
	Registerer prometheus.Registerer
}

// SubmitRequest is the body of the submit endpoint.
type SubmitRequest struct {
	Session string     `json:"session,omitempty"`
	Job     *queue.Job `json:"job"`
}

// SubmitReply is the submit endpoint's answer.
type SubmitReply struct {
	ID        string `json:"id"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// Serve ensures the topology, serves the submit and status API as the NATS
// micro service "procfleet" (subjects <prefix>.api.submit and
// <prefix>.api.status) and over HTTP where asked, and moves jobs whose
// deliveries ran out to the dead-letter stream. It blocks until ctx ends.
func Serve(ctx context.Context, nc *nats.Conn, cfg ServeConfig) error {
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("dispatcher")
	c, err := EnsureClient(ctx, nc, cfg.Queue)
	if err != nil {
		return err
	}
	qcfg := c.topo.Config
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
	if err := g.AddEndpoint("submit", micro.HandlerFunc(func(req micro.Request) {
		reply, code, err := c.handleSubmit(ctx, req.Data())
		if err != nil {
			_ = req.Error(code, err.Error(), nil)
			return
		}
		_ = req.RespondJSON(reply)
	})); err != nil {
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
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("dispatcher: http listen %s: %w", cfg.HTTPAddr, err)
		}
		srv = &http.Server{Handler: c.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		httpErr = make(chan error, 1)
		go func() { httpErr <- srv.Serve(ln) }()
		log.Info("http api", zap.String("addr", ln.Addr().String()))
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

func (c *Client) handleSubmit(ctx context.Context, body []byte) (*SubmitReply, string, error) {
	var req SubmitRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, "400", fmt.Errorf("bad request: body is not a submit request: %v", err)
	}
	if req.Job == nil {
		return nil, "400", errors.New("bad request: missing job")
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ack, err := c.topo.Submit(sctx, req.Session, req.Job)
	if err != nil {
		if errors.Is(err, queue.ErrBadRequest) {
			return nil, "400", err
		}
		return nil, "503", err
	}
	return &SubmitReply{ID: req.Job.ID, Duplicate: ack != nil && ack.Duplicate}, "", nil
}

func (c *Client) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !c.nc.IsConnected() {
			http.Error(w, "nats disconnected", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /v1/jobs", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		reply, code, err := c.handleSubmit(r.Context(), body)
		if err != nil {
			status := http.StatusBadRequest
			if code != "400" {
				status = http.StatusServiceUnavailable
			}
			http.Error(w, err.Error(), status)
			return
		}
		writeJSON(w, reply)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		st, err := c.Status(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, st)
	})
	mux.HandleFunc("GET /v1/results/{id}", func(w http.ResponseWriter, r *http.Request) {
		res, err := c.topo.GetResult(r.Context(), r.PathValue("id"))
		if errors.Is(err, queue.ErrResultNotFound) {
			http.Error(w, "no result yet", http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, res)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
