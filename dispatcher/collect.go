package dispatcher

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/queue"
)

// Collector receives every result published on the fleet's result subjects
// from the moment it is created. Create it before submitting, so no result
// can slip past; it is how the demo and the benchmark wait for many jobs
// without one subscription per job.
type Collector struct {
	sub     *nats.Subscription
	mu      sync.Mutex
	results map[string]*queue.Result
	arrived map[string]time.Time
	want    map[string]bool
	missing int
	bad     int
	changed chan struct{}
}

// Collect subscribes to <prefix>.result.*.
func (c *Client) Collect() (*Collector, error) {
	col := &Collector{
		results: make(map[string]*queue.Result),
		arrived: make(map[string]time.Time),
		want:    make(map[string]bool),
		changed: make(chan struct{}, 1),
	}
	sub, err := c.nc.Subscribe(c.topo.Config.ResultSubject("*"), col.onMsg)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: subscribe results: %w", err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	if err := c.nc.Flush(); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	col.sub = sub
	return col, nil
}

func (col *Collector) onMsg(m *nats.Msg) {
	now := time.Now()
	var r queue.Result
	if err := json.Unmarshal(m.Data, &r); err != nil {
		col.mu.Lock()
		col.bad++
		col.mu.Unlock()
		return
	}
	col.mu.Lock()
	if _, dup := col.results[r.ID]; !dup {
		col.results[r.ID] = &r
		col.arrived[r.ID] = now
		if col.want[r.ID] {
			col.missing--
		}
	}
	col.mu.Unlock()
	select {
	case col.changed <- struct{}{}:
	default:
	}
}

// Expect adds job ids that Wait waits for.
func (col *Collector) Expect(ids ...string) {
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, id := range ids {
		if col.want[id] {
			continue
		}
		col.want[id] = true
		if _, ok := col.results[id]; !ok {
			col.missing++
		}
	}
}

// Wait blocks until every expected id has a result, or ctx ends. progress,
// when not nil, is called with (done, expected) as results arrive.
func (col *Collector) Wait(ctx context.Context, progress func(done, total int)) error {
	for {
		col.mu.Lock()
		missing, total := col.missing, len(col.want)
		col.mu.Unlock()
		if progress != nil {
			progress(total-missing, total)
		}
		if missing <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("dispatcher: %d of %d results missing: %w", missing, total, ctx.Err())
		case <-col.changed:
		}
	}
}

// Result returns the result for id and when it arrived, if it has.
func (col *Collector) Result(id string) (*queue.Result, time.Time, bool) {
	col.mu.Lock()
	defer col.mu.Unlock()
	r, ok := col.results[id]
	return r, col.arrived[id], ok
}

// Count is how many distinct results arrived.
func (col *Collector) Count() int {
	col.mu.Lock()
	defer col.mu.Unlock()
	return len(col.results)
}

// Close unsubscribes.
func (col *Collector) Close() error { return col.sub.Unsubscribe() }
