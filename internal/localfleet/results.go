package localfleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// ReadResults reads every result stored in the fleet's results stream, by
// job id, in the order they were stored. It reads the stream rather than
// listening, so it sees results stored while nobody was subscribed; the
// chaos run and the reliability tests reconcile against it.
func ReadResults(ctx context.Context, topo *queue.Topology) (map[string][]*queue.Result, error) {
	out := map[string][]*queue.Result{}
	info, err := topo.Results.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("localfleet: read results: %w", err)
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return out, nil
	}
	cons, err := topo.JS.OrderedConsumer(ctx, topo.Config.ResultsStream(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, fmt.Errorf("localfleet: read results: %w", err)
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("localfleet: read results: %w", err)
		}
		n := 0
		var seq uint64
		for m := range batch.Messages() {
			n++
			if meta, err := m.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			var res queue.Result
			if err := json.Unmarshal(m.Data(), &res); err != nil || res.ID == "" {
				continue
			}
			out[res.ID] = append(out[res.ID], &res)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("localfleet: read results: %w", err)
		}
		if seq >= last {
			return out, nil
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			// Messages older than MaxAge may have gone since Info.
			return out, nil
		}
	}
}
