package localfleet

import (
	"io"
	"os"
	"slices"
	"time"

	"go.uber.org/zap"
)

// Percentiles of a latency sample, as the demo and the bench report them.
type Percentiles struct{ P50, P90, P99, Max time.Duration }

// PercentilesOf sorts d and returns its percentiles.
func PercentilesOf(d []time.Duration) Percentiles {
	if len(d) == 0 {
		return Percentiles{}
	}
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return Percentiles{P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: d[len(d)-1]}
}

// OutputDefaults fills the tools' output fields that are nil: the report
// goes to stdout, progress to progressDefault, and logs nowhere.
func OutputDefaults(out, progress, progressDefault io.Writer, log *zap.Logger) (io.Writer, io.Writer, *zap.Logger) {
	if out == nil {
		out = os.Stdout
	}
	if progress == nil {
		progress = progressDefault
	}
	if log == nil {
		log = zap.NewNop()
	}
	return out, progress, log
}
