package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// The dashboard's live state. One dash per Serve with HTTP: it keeps the
// recent attempt events (core NATS, <prefix>.event.attempt.*) in a bounded
// ring, samples the streams once a second for the rates, and, while at
// least one page watches, asks the agents for their info and sends each
// watcher a delta over SSE.
const (
	// attemptRing is how many attempt events the dispatcher keeps.
	attemptRing = 4096
	// historyLen is the chart's length in seconds.
	historyLen = 300
	// agentService is the agents' micro service name (agent.ServiceName;
	// dispatcher does not import agent).
	agentService = "procfleet-agent"
	// agentsWait bounds one scatter-gather of the agents' stats.
	agentsWait = 500 * time.Millisecond
	// agentsGap is the quiet time after the expected replies.
	agentsGap = 50 * time.Millisecond
	// timingWindow is the window of the p50/p99 job times.
	timingWindow = time.Minute
)

// histPoint is one second of the chart.
type histPoint struct {
	T   int64   `json:"t"` // unix ms
	In  float64 `json:"in"`
	Out float64 `json:"out"`
}

// QueueView is one queue's line on the dashboard.
type QueueView struct {
	Name     string    `json:"name"`
	Depth    uint64    `json:"depth"`             // jobs in the jobs stream (waiting or running), schedules not counted
	Oldest   time.Time `json:"oldest,omitzero"`   // the oldest job still in the stream
	In       float64   `json:"in"`                // jobs/s submitted (last second)
	Out      float64   `json:"out"`               // results/s stored (last second)
	P50MS    float64   `json:"p50_ms"`            // job time on a worker over the last minute
	P99MS    float64   `json:"p99_ms"`            //
	Sessions int       `json:"sessions"`          // live sessions on the agents
	Workers  int       `json:"workers"`           //
	Busy     int       `json:"busy"`              //
	Results  uint64    `json:"results"`           // stored results
	DLQ      uint64    `json:"dead_letters"`      // stored dead letters
	Failures int       `json:"recent_failures"`   // failed attempts in the ring
	Attempts int       `json:"recent_attempts"`   // attempts in the ring
	Sampled  time.Time `json:"sampled,omitzero"`  //
	Error    string    `json:"error,omitempty"`   // why the sample is missing
	Agents   int       `json:"agents"`            //
	Dropped  uint64    `json:"dropped,omitempty"` // attempt events that could not be decoded
}

// dashMsg is one SSE "snap" event.
type dashMsg struct {
	T        int64             `json:"t"`
	Full     bool              `json:"full,omitempty"`
	Agents   []json.RawMessage `json:"agents"` // full: all; else the changed ones
	Gone     []string          `json:"gone,omitempty"`
	Queues   []QueueView       `json:"queues"`
	Point    *histPoint        `json:"point,omitempty"`
	History  []histPoint       `json:"history,omitempty"`
	Features map[string]bool   `json:"features,omitempty"`
}

// dashSub is one page watching.
type dashSub struct {
	ch       chan []byte // SSE frames, pre-encoded
	job      string      // a job whose attempts it follows, or ""
	needFull bool        // it missed a delta: send it everything next
}

type dash struct {
	c        *Client
	log      *zap.Logger
	features func() map[string]bool

	mu      sync.Mutex
	ring    []queue.AttemptEvent
	next    int
	dropped uint64
	hist    []histPoint
	queue   QueueView
	agents  map[string][]byte // name -> the agent's last info JSON
	names   []string
	subs    map[*dashSub]struct{}
	lastIn  uint64
	lastOut uint64
	lastAt  time.Time
	// wake asks run for a tick now: a first page need not wait a second.
	wake chan struct{}
}

func newDash(c *Client, log *zap.Logger, features func() map[string]bool) *dash {
	return &dash{c: c, log: log, features: features, agents: map[string][]byte{}, subs: map[*dashSub]struct{}{},
		wake: make(chan struct{}, 1)}
}

// run samples once a second until ctx ends. It owns the attempt-event
// subscription.
func (d *dash) run(ctx context.Context) {
	sub, err := d.c.nc.Subscribe(d.c.topo.Config.AttemptEventSubject("*"), d.onAttempt)
	if err != nil {
		d.log.Warn("dashboard: attempt events unavailable", zap.Error(err))
	} else {
		defer func() { _ = sub.Unsubscribe() }()
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		d.tick(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
	}
}

func (d *dash) onAttempt(m *nats.Msg) {
	var ev queue.AttemptEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil || !queue.ValidToken(ev.ID) {
		d.mu.Lock()
		d.dropped++
		d.mu.Unlock()
		return
	}
	var frame []byte
	d.mu.Lock()
	if len(d.ring) < attemptRing {
		d.ring = append(d.ring, ev)
	} else {
		d.ring[d.next] = ev
		d.next = (d.next + 1) % attemptRing
	}
	for s := range d.subs {
		if s.job == ev.ID {
			if frame == nil {
				frame = sseFrame("attempt", m.Data)
			}
			select {
			case s.ch <- frame:
			default:
			}
		}
	}
	d.mu.Unlock()
}

// attempts returns the ring's events oldest first that match keep.
func (d *dash) attempts(keep func(*queue.AttemptEvent) bool) []queue.AttemptEvent {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []queue.AttemptEvent
	for i := range d.ring {
		ev := &d.ring[(d.next+i)%len(d.ring)]
		if keep(ev) {
			out = append(out, *ev)
		}
	}
	return out
}

func (d *dash) tick(ctx context.Context) {
	now := time.Now()
	q := QueueView{Name: "default", Sampled: now}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := d.c.topo
	var in, out uint64
	if si, err := t.Jobs.Info(sctx); err == nil {
		in = si.State.LastSeq
		// Not the stream's count and first message: delayed jobs and
		// periodic schedules are no jobs waiting.
		consumers, err := t.Consumers(sctx)
		if err == nil {
			q.Depth, q.Oldest, err = t.WaitingJobs(sctx, si, consumers)
		}
		if err != nil {
			q.Error = err.Error()
		}
	} else {
		q.Error = err.Error()
	}
	if si, err := t.Results.Info(sctx); err == nil {
		q.Results, out = si.State.Msgs, si.State.LastSeq
	}
	if si, err := t.DLQ.Info(sctx); err == nil {
		q.DLQ = si.State.Msgs
	}
	d.mu.Lock()
	watched := len(d.subs) > 0
	var pt histPoint
	if !d.lastAt.IsZero() && q.Error == "" {
		secs := now.Sub(d.lastAt).Seconds()
		pt = histPoint{T: now.UnixMilli(), In: rate(in, d.lastIn, secs), Out: rate(out, d.lastOut, secs)}
		d.hist = append(d.hist, pt)
		if len(d.hist) > historyLen {
			d.hist = slices.Delete(d.hist, 0, len(d.hist)-historyLen)
		}
		q.In, q.Out = pt.In, pt.Out
	}
	if q.Error == "" {
		d.lastIn, d.lastOut, d.lastAt = in, out, now
	}
	d.mu.Unlock()
	if !watched {
		return
	}
	infos := d.gatherAgents(ctx)
	q.P50MS, q.P99MS, q.Attempts, q.Failures = d.timings(now)

	d.mu.Lock()
	defer d.mu.Unlock()
	q.Dropped = d.dropped
	var changed []json.RawMessage
	seen := map[string]bool{}
	names := make([]string, 0, len(infos))
	for name := range infos {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ai := infos[name]
		seen[name] = true
		q.Sessions += ai.sessions
		q.Workers += ai.workers
		q.Busy += ai.busy
		if !bytes.Equal(d.agents[name], ai.raw) {
			d.agents[name] = ai.raw
			changed = append(changed, ai.raw)
		}
	}
	q.Agents = len(names)
	var gone []string
	for name := range d.agents {
		if !seen[name] {
			gone = append(gone, name)
			delete(d.agents, name)
		}
	}
	d.names = names
	d.queue = q
	delta, _ := json.Marshal(dashMsg{T: now.UnixMilli(), Agents: nonNil(changed), Gone: gone, Queues: []QueueView{q}, Point: &pt})
	deltaFrame := sseFrame("snap", delta)
	var fullFrame []byte
	for s := range d.subs {
		frame := deltaFrame
		if s.needFull {
			if fullFrame == nil {
				fullFrame = d.fullFrameLocked(now)
			}
			frame = fullFrame
		}
		select {
		case s.ch <- frame:
			s.needFull = false
		default:
			s.needFull = true
		}
	}
}

func nonNil(r []json.RawMessage) []json.RawMessage {
	if r == nil {
		return []json.RawMessage{}
	}
	return r
}

// fullFrameLocked is everything a new page needs.
func (d *dash) fullFrameLocked(now time.Time) []byte {
	all := make([]json.RawMessage, 0, len(d.names))
	for _, n := range d.names {
		if raw, ok := d.agents[n]; ok {
			all = append(all, raw)
		}
	}
	q := d.queue
	if q.Name == "" {
		q.Name = "default"
	}
	var feats map[string]bool
	if d.features != nil {
		feats = d.features()
	}
	b, _ := json.Marshal(dashMsg{T: now.UnixMilli(), Full: true, Agents: all, Queues: []QueueView{q},
		History: slices.Clone(d.hist), Features: feats})
	return sseFrame("snap", b)
}

func rate(now, before uint64, secs float64) float64 {
	if now < before || secs <= 0 {
		return 0
	}
	return float64(now-before) / secs
}

// timings gives the p50 and p99 attempt times of the last minute, and how
// many attempts and failed ones the ring holds.
func (d *dash) timings(now time.Time) (p50, p99 float64, attempts, failures int) {
	d.mu.Lock()
	durs := make([]float64, 0, len(d.ring))
	for i := range d.ring {
		ev := &d.ring[i]
		if ev.Outcome != "ok" {
			failures++
		}
		if now.Sub(ev.FinishedAt) <= timingWindow && !ev.StartedAt.IsZero() {
			durs = append(durs, float64(ev.FinishedAt.Sub(ev.StartedAt).Microseconds())/1000)
		}
	}
	attempts = len(d.ring)
	d.mu.Unlock()
	if len(durs) == 0 {
		return 0, 0, attempts, failures
	}
	slices.Sort(durs)
	pick := func(q float64) float64 { return durs[min(len(durs)-1, int(q*float64(len(durs))))] }
	return pick(0.50), pick(0.99), attempts, failures
}

// agentInfo is the part of an agent's info the dispatcher reads; the page
// gets the whole JSON.
type agentInfo struct {
	raw                     json.RawMessage
	sessions, workers, busy int
}

// gatherAgents asks every agent for its stats in one scatter-gather on
// $SRV.STATS.procfleet-agent: one request, one reply per agent.
func (d *dash) gatherAgents(ctx context.Context) map[string]agentInfo {
	nc := d.c.nc
	out := map[string]agentInfo{}
	// As many replies as last time, then a short quiet gap for newcomers;
	// at most agentsWait in all.
	d.mu.Lock()
	want := max(len(d.names), 1)
	d.mu.Unlock()
	inbox := nc.NewRespInbox()
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(inbox, ch)
	if err != nil {
		return out
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$SRV.STATS."+agentService, inbox, nil); err != nil {
		return out
	}
	timer := time.NewTimer(agentsWait)
	defer timer.Stop()
	var gap <-chan time.Time
	for {
		if gap == nil && len(out) >= want {
			gt := time.NewTimer(agentsGap)
			defer gt.Stop()
			gap = gt.C
		}
		select {
		case <-ctx.Done():
			return out
		case <-timer.C:
			return out
		case <-gap:
			return out
		case m := <-ch:
			var stats struct {
				Endpoints []struct {
					Data json.RawMessage `json:"data"`
				} `json:"endpoints"`
			}
			if json.Unmarshal(m.Data, &stats) != nil || len(stats.Endpoints) == 0 {
				continue
			}
			raw := dropHeartbeat(stats.Endpoints[0].Data)
			var head struct {
				Agent struct {
					Name string `json:"name"`
				} `json:"agent"`
				Pool struct {
					Sessions, Busy, Size int
				} `json:"pool"`
			}
			if json.Unmarshal(raw, &head) != nil || head.Agent.Name == "" {
				continue
			}
			out[head.Agent.Name] = agentInfo{raw: raw, sessions: head.Pool.Sessions, workers: head.Pool.Size, busy: head.Pool.Busy}
		}
	}
}

// subscribe adds a watcher; the first frame it gets is the full state.
func (d *dash) subscribe(job string) *dashSub {
	s := &dashSub{ch: make(chan []byte, 16), job: job, needFull: true}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subs[s] = struct{}{}
	if len(d.names) > 0 {
		s.ch <- d.fullFrameLocked(time.Now())
		s.needFull = false
	} else {
		// Nothing gathered yet (no page watched so far): gather now.
		select {
		case d.wake <- struct{}{}:
		default:
		}
	}
	return s
}

func (d *dash) unsubscribe(s *dashSub) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.subs, s)
}

// sseFrame encodes one server-sent event; data is one line of JSON.
func sseFrame(event string, data []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(data) + len(event) + 16)
	b.WriteString("event: ")
	b.WriteString(event)
	b.WriteString("\ndata: ")
	b.Write(bytes.ReplaceAll(data, []byte("\n"), []byte("\ndata: ")))
	b.WriteString("\n\n")
	return b.Bytes()
}

// runningOn finds the worker that runs job id now, from the agents' last
// info (kept while a page watches).
func (d *dash) runningOn(id string) (agentName, workerID string, pid int, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, raw := range d.agents {
		if !bytes.Contains(raw, []byte(`"current_job":"`+id+`"`)) {
			continue
		}
		var info struct {
			Workers []struct {
				ID         string `json:"id"`
				PID        int    `json:"pid"`
				CurrentJob string `json:"current_job"`
			} `json:"workers"`
		}
		if json.Unmarshal(raw, &info) != nil {
			continue
		}
		for _, w := range info.Workers {
			if w.CurrentJob == id {
				return name, w.ID, w.PID, true
			}
		}
	}
	return "", "", 0, false
}

// dropHeartbeat removes the agent's heartbeat time ("updated_at", the first
// one: the registry entry's) from its info: it changes every heartbeat and
// would put every agent in every delta.
func dropHeartbeat(raw []byte) []byte {
	key := []byte(`"updated_at":"`)
	i := bytes.Index(raw, key)
	if i < 0 {
		return raw
	}
	j := bytes.IndexByte(raw[i+len(key):], '"')
	if j < 0 {
		return raw
	}
	end := i + len(key) + j + 1
	if end < len(raw) && raw[end] == ',' {
		end++
	} else if i > 0 && raw[i-1] == ',' {
		i--
	}
	out := make([]byte, 0, len(raw)-(end-i))
	out = append(out, raw[:i]...)
	return append(out, raw[end:]...)
}
