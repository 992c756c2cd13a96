package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors, for a program to add its own metrics to.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// StartMetrics returns the program's registry and, when addr is not empty,
// serves it there; stop shuts the server down (a no-op without one).
func StartMetrics(addr string, log *zap.Logger) (reg *prometheus.Registry, stop func(), err error) {
	reg = NewRegistry()
	if addr == "" {
		return reg, func() {}, nil
	}
	ms, err := ServeMetrics(addr, reg, log)
	if err != nil {
		return nil, nil, err
	}
	return reg, func() { _ = ms.Close(context.Background()) }, nil
}

// MetricsServer serves /metrics until Close.
type MetricsServer struct {
	Addr string // the address it listens on (resolved if the port was 0)
	srv  *http.Server
	done chan error
}

// ServeMetrics listens on addr (a bare ":port" binds 127.0.0.1 only, so
// metrics are not exposed by accident) and serves reg at /metrics.
func ServeMetrics(addr string, reg *prometheus.Registry, log *zap.Logger) (*MetricsServer, error) {
	addr = LocalAddr(addr)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	ms := &MetricsServer{
		Addr: ln.Addr().String(),
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		done: make(chan error, 1),
	}
	go func() { ms.done <- ms.srv.Serve(ln) }()
	log.Info("metrics", zap.String("url", "http://"+ms.Addr+"/metrics"))
	return ms, nil
}

// Close stops the server and waits for it.
func (m *MetricsServer) Close(ctx context.Context) error {
	err := m.srv.Shutdown(ctx)
	if serr := <-m.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
