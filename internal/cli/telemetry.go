package cli

import (
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Telemetry is what a long-running program starts before anything else: its
// logger and its Prometheus registry, served on --metrics when set.
type Telemetry struct {
	Log      *zap.Logger
	Registry *prometheus.Registry
	stop     func()
}

// StartTelemetry builds the logger from --log-format and --log-level and
// the registry, serving it on metricsAddr unless that is empty. Close
// undoes both.
func StartTelemetry(logFormat, logLevel, metricsAddr string) (*Telemetry, error) {
	log, err := NewLogger(logFormat, logLevel)
	if err != nil {
		return nil, err
	}
	reg, stop, err := StartMetrics(metricsAddr, log)
	if err != nil {
		_ = log.Sync()
		return nil, err
	}
	return &Telemetry{Log: log, Registry: reg, stop: stop}, nil
}

// Close stops the metrics server and flushes the log.
func (t *Telemetry) Close() {
	t.stop()
	_ = t.Log.Sync()
}
