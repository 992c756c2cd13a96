package agent

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// registry is this agent's view of the agents bucket, kept by a KV watch
// (registryLoop): who is live, and who left or expired and when. A watch
// costs nothing at rest beyond the heartbeats it relays, where listing the
// bucket on every rebalance cost a consumer per round, and it tells the
// survivors of an agent's death the moment the server expires its entry.
type registry struct {
	mu    sync.Mutex
	ready bool                 // the watch has delivered every current entry
	live  map[string]time.Time // agents with a live entry, and when it was last seen written
	// queues are the queues each live agent serves, from its entry (an
	// entry that names none serves the default queue).
	queues map[string][]string
	gone   map[string]time.Time // agents whose entry was removed or expired, and when
}

// othersWroteSince reports whether the watch saw an entry of another agent
// than self written after t.
func (g *registry) othersWroteSince(self string, t time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for name, at := range g.live {
		if name != self && at.After(t) {
			return true
		}
	}
	return false
}

// reset forgets everything, for a new watch.
func (g *registry) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.ready = false
	g.live, g.gone, g.queues = map[string]time.Time{}, map[string]time.Time{}, map[string][]string{}
}

// serves reports whether live agent name serves queue q, as its last
// registry entry said.
func (g *registry) serves(name, q string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	qs, ok := g.queues[name]
	if !ok || len(qs) == 0 {
		return q == queue.DefaultQueue
	}
	return slices.Contains(qs, q)
}

// entryQueues reads the queues an agents bucket entry names.
func entryQueues(value []byte) []string {
	var in struct {
		Queues []struct {
			Queue string `json:"queue"`
		} `json:"queues"`
	}
	if json.Unmarshal(value, &in) != nil {
		return nil
	}
	out := make([]string, 0, len(in.Queues))
	for _, q := range in.Queues {
		out = append(out, q.Queue)
	}
	slices.Sort(out)
	return out
}

// view returns the live agents (sorted) and the gone ones; ok is false until
// the watch has caught up. An entry not seen written for longer than stale
// counts as neither: its expiry marker was missed (the watch was away
// longer than the server keeps markers), so the agent is taken for dead,
// but its leases are left to expire, since when it went is unknown.
func (g *registry) view(stale time.Duration) (live []string, gone map[string]time.Time, ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.ready {
		return nil, nil, false
	}
	live = make([]string, 0, len(g.live))
	for n, seen := range g.live {
		if time.Since(seen) <= stale {
			live = append(live, n)
		}
	}
	slices.Sort(live)
	return live, maps.Clone(g.gone), true
}

// apply folds one watch event in (nil: the watch has caught up) and
// reports whether membership changed. forget drops gone entries older than
// it, whose leases have expired on their own by then.
func (g *registry) apply(e jetstream.KeyValueEntry, forget time.Duration) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.live == nil {
		g.live, g.gone, g.queues = map[string]time.Time{}, map[string]time.Time{}, map[string][]string{}
	}
	if e == nil {
		changed := !g.ready
		g.ready = true
		return changed
	}
	name := e.Key()
	for n, at := range g.gone {
		if time.Since(at) > forget {
			delete(g.gone, n)
		}
	}
	_, was := g.live[name]
	switch e.Operation() {
	case jetstream.KeyValueDelete, jetstream.KeyValuePurge:
		delete(g.live, name)
		delete(g.queues, name)
		g.gone[name] = e.Created()
		return was && g.ready
	default:
		g.live[name] = time.Now()
		delete(g.gone, name)
		qs := entryQueues(e.Value())
		moved := !slices.Equal(qs, g.queues[name])
		g.queues[name] = qs
		return (!was || moved) && g.ready
	}
}

// registryLoop watches the agents bucket for as long as the agent runs,
// and kicks a rebalance whenever an agent joins or goes. A watch that ends
// (a lost connection the watcher could not recover) is opened again.
func (a *Agent) registryLoop() {
	defer a.loops.Done()
	ctx := a.loopCtx
	forget := 2 * (a.cfg.Queue.LeaseTTL + a.cfg.Queue.AgentTTL)
	for ctx.Err() == nil {
		// The view needs names, operations and the queues each agent
		// serves (in the entry's body, a few hundred bytes per heartbeat).
		w, err := a.lanes[0].topo.Agents.WatchAll(ctx)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("watch agents", zap.Error(err))
			}
			if !sleepCtx(ctx, time.Second) {
				return
			}
			continue
		}
		a.reg.reset()
		a.watchRegistry(ctx, w, forget)
		_ = w.Stop()
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return
		}
	}
}

func (a *Agent) watchRegistry(ctx context.Context, w jetstream.KeyWatcher, forget time.Duration) {
	// This agent's own heartbeats come back through the watch. A watch
	// that stops relaying them while they get through has silently broken
	// (say, across a server restart), so it is opened again.
	ttl := a.cfg.Queue.AgentTTL
	check := time.NewTicker(ttl)
	defer check.Stop()
	lastSelf := time.Now()
	var twin nameTwin
	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
			beat := a.at(a.beatOK.Load())
			if time.Since(lastSelf) > ttl && beat.After(lastSelf.Add(a.cfg.HeartbeatInterval)) {
				a.log.Warn("agents watch relays nothing; watching again", zap.Duration("silent", time.Since(lastSelf)))
				return
			}
		case e, ok := <-w.Updates():
			if e != nil && e.Key() == a.cfg.Name && e.Operation() == jetstream.KeyValuePut {
				lastSelf = time.Now()
				twin.check(a, e.Value())
			}
			if !ok {
				if ctx.Err() == nil {
					a.log.Warn("agents watch closed; watching again")
				}
				return
			}
			if a.reg.apply(e, forget) {
				a.kickRebalance()
			}
		}
	}
}

// nameTwin notices another live agent heartbeating under this agent's name
// (two processes started with one --name): each takes the other's leases as
// its own, so their partitions, and the sessions on them, go back and forth
// between the two every few seconds. Nothing in the registry shows it (one
// key, whoever wrote last), so the agent says so in its log.
type nameTwin struct {
	seenSelf bool      // one of this agent's own heartbeats came back
	warned   time.Time // when the last error was logged
}

// nameTwinLogEvery spaces the error lines about a twin.
const nameTwinLogEvery = 30 * time.Second

// check reads one put of this agent's key. A foreign one before this
// agent's own first heartbeat came back is a predecessor's last (an agent
// restarted under the same name); after it, a live twin's.
func (tw *nameTwin) check(a *Agent, value []byte) {
	var in queue.AgentInfo
	if json.Unmarshal(value, &in) != nil {
		return
	}
	host, _ := os.Hostname()
	if in.Host == host && in.PID == os.Getpid() && in.StartedAt.Equal(a.startedAt) {
		tw.seenSelf = true
		return
	}
	if !tw.seenSelf || time.Since(tw.warned) < nameTwinLogEvery {
		return
	}
	tw.warned = time.Now()
	a.log.Error("another agent runs under this agent's name: the two take each other's partitions, and their sessions "+
		"move between them every few seconds; give every agent its own --name",
		zap.String("other_host", in.Host), zap.Int("other_pid", in.PID), zap.Time("other_started_at", in.StartedAt))
}

// kickRebalance asks the membership loop to rebalance now.
func (a *Agent) kickRebalance() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// heartbeatLoop refreshes the registry entry. It runs on its own, so that
// renewing many leases never delays the beat that keeps this agent alive in
// the others' eyes.
func (a *Agent) heartbeatLoop() {
	defer a.loops.Done()
	a.beat(a.loopCtx)
}

// beat refreshes the registry entry every HeartbeatInterval until ctx ends.
func (a *Agent) beat(ctx context.Context) {
	t := time.NewTicker(a.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat", zap.Error(err))
		}
	}
}

// membershipLoop renews every queue's leases and rebalances each queue's
// partitions over the live agents serving that queue (lane.rebalance), at
// once when the registry watch reports a join or a departure.
func (a *Agent) membershipLoop() {
	defer a.loops.Done()
	ctx := a.loopCtx
	tick := min(a.cfg.RebalanceInterval, a.cfg.LeaseRenewInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastRenew, lastBalance time.Time
	for {
		now := time.Now()
		if a.renewSoon.Swap(false) || now.Sub(lastRenew) >= a.cfg.LeaseRenewInterval {
			lapsed := now.After(a.lanes[0].beatDeadline())
			renewed := make([][]*runner, len(a.lanes))
			for i, l := range a.lanes {
				renewed[i] = l.renewLeases(ctx)
			}
			if lapsed {
				a.stepDownIfRefused(ctx, renewed)
			}
			lastRenew = now
		}
		if now.Sub(lastBalance) >= a.cfg.RebalanceInterval {
			a.rebalance(ctx)
			lastBalance = now
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.kick:
			a.rebalance(ctx)
			lastBalance = time.Now()
		}
	}
}

// stepDownIfRefused hands over the partitions in renewed (per lane, those
// whose lease this round renewed) when the registry refuses this agent
// alone.
//
// An agent whose heartbeats have not got through for longer than its claim
// (beatDeadline) pulls nothing, and the others may count it as gone. If its
// lease renewals still get through, renewing would keep its partitions from
// the others for as long as that lasts: a lease renewed after its holder
// went is alive (queue.Topology.TakeLease), and an agent that joins
// meanwhile does not know the holder at all. So when the others'
// heartbeats do get through (the watch saw one after this agent's claim
// lapsed: the registry works, only not for this agent) and a heartbeat sent
// now is refused too, the agent hands each partition over as a graceful
// stop does: running jobs finish, held ones go back in their sessions'
// order, then the lease is deleted. It takes partitions again (rebalance)
// once a heartbeat gets through. A registry down for everyone (a lost
// connection; a registry stream electing a leader) hands nothing over: all
// agents just pause.
func (a *Agent) stepDownIfRefused(ctx context.Context, renewed [][]*runner) {
	n := 0
	for _, rs := range renewed {
		n += len(rs)
	}
	deadline := a.lanes[0].beatDeadline()
	if n == 0 || ctx.Err() != nil || !a.reg.othersWroteSince(a.cfg.Name, deadline) {
		return
	}
	hctx, cancel := context.WithTimeout(ctx, a.cfg.HeartbeatInterval)
	err := a.heartbeat(hctx)
	cancel()
	if err == nil || ctx.Err() != nil || !time.Now().After(a.lanes[0].beatDeadline()) {
		return
	}
	a.log.Warn("this agent's heartbeats are refused while the other agents' and its lease renewals get through: handing every partition over until one of its heartbeats does",
		zap.Int("partitions", n), zap.Error(err))
	for i, rs := range renewed {
		for _, r := range rs {
			a.lanes[i].releasePartition(r, true)
		}
	}
}

// rebalance rebalances every queue over the agents the registry view says
// serve it. A partition whose lease is held by an agent that has gone (its
// registry entry expired: it died) is taken at once rather than after the
// lease expires.
func (a *Agent) rebalance(ctx context.Context) {
	names, gone, ok := a.reg.view(2 * a.cfg.Queue.AgentTTL)
	if !ok {
		return // the registry watch has not caught up yet
	}
	for _, l := range a.lanes {
		q := l.queueName()
		servers := []string{a.cfg.Name}
		for _, n := range names {
			if n != a.cfg.Name && a.reg.serves(n, q) {
				servers = append(servers, n)
			}
		}
		slices.Sort(servers)
		l.rebalance(ctx, servers, gone)
	}
}

// renewLeases renews the leases of the partitions this lane consumes and
// of those it hands over, and returns the runners whose lease it renewed
// (see Agent.stepDownIfRefused).
func (a *lane) renewLeases(ctx context.Context) (renewed []*runner) {
	for _, r := range a.runnerList(false) {
		sent := time.Now()
		err := a.renew(ctx, r)
		switch {
		case err == nil:
			r.leaseOK.Store(a.stamp(sent))
			renewed = append(renewed, r)
		case errors.Is(err, queue.ErrLeaseLost):
			// Someone else may own it now: stop pulling at once. Running
			// jobs still finish; their acks are valid on the shared consumer.
			a.log.Warn("lease lost", zap.Int("partition", r.partition))
			a.releasePartition(r, false)
		default:
			if ctx.Err() == nil {
				a.log.Warn("renew lease", zap.Int("partition", r.partition), zap.Error(err))
			}
		}
	}
	a.renewHandovers(ctx, a.handingList())
	return renewed
}

// renew renews r's lease. A renewal whose outcome is unknown (a timeout as
// the connection dropped) may still be applied later, leaving r's revision
// behind its own write: the lease lost that the next renewal then reports is
// looked at again (queue.Topology.ResumeLease) before it counts.
func (a *lane) renew(ctx context.Context, r *runner) error {
	err := a.topo.RenewLease(ctx, r.lease)
	if errors.Is(err, queue.ErrLeaseLost) && r.leaseUnsure {
		if err = a.topo.ResumeLease(ctx, r.lease); err == nil {
			a.log.Info("lease kept: a renewal whose answer was lost had been applied", zap.Int("partition", r.partition))
			err = a.topo.RenewLease(ctx, r.lease)
		}
	}
	r.leaseUnsure = err != nil && !errors.Is(err, queue.ErrLeaseLost)
	return err
}

// renewHandovers renews the leases of runners in rs that hand their
// partition over: it stays this agent's until their drain ends (their
// running jobs finish), for were the lease to lapse before, the next owner
// could run a session's next job beside the one still running here.
func (a *lane) renewHandovers(ctx context.Context, rs []*runner) {
	for _, r := range rs {
		r.leaseMu.Lock()
		if r.lease != nil && r.handover && !r.released {
			if err := a.renew(ctx, r); errors.Is(err, queue.ErrLeaseLost) {
				a.log.Warn("lease lost while handing over", zap.Int("partition", r.partition))
				r.released = true
			} else if err != nil && ctx.Err() == nil {
				a.log.Warn("renew lease", zap.Int("partition", r.partition), zap.Error(err))
			}
		}
		r.leaseMu.Unlock()
	}
}

// rebalance applies the agents' local rules (queue.AgentView.Step) to this
// agent's view: names (the live agents serving this queue, sorted; this
// agent among them), what it consumes and drains, and, only when it is
// under its quota, the lease table. The quotas come from the membership
// alone, so an agent at its quota, as every agent is once the fleet has
// settled, moves nothing and reads nothing. One over its quota hands over
// its lowest-scoring excess (releasePartition: the lease is deleted once
// the drain ends). One under it takes the orphans Rebalance gives it, then
// any orphan that stayed one since its last reading, a dead agent's at
// once (TakeLease with gone).
func (a *lane) rebalance(ctx context.Context, names []string, gone map[string]time.Time) {
	if time.Now().After(a.beatDeadline()) {
		// The others may count this agent as gone: it takes nothing it
		// could not pull from (see Agent.stepDownIfRefused).
		return
	}
	partitions := a.cfg.Queue.Partitions
	v := queue.AgentView{Self: a.cfg.Name, Agents: names, Orphans: a.orphans}
	a.mu.Lock()
	v.Held = a.ownedLocked()
	for p := range a.handing {
		v.Handing = append(v.Handing, p)
	}
	a.mu.Unlock()
	if v.NeedsLeases(partitions) {
		leases, err := a.topo.LeaseOwners(ctx)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("read leases", zap.Error(err))
			}
			return
		}
		v.Leases = make(map[int]string, len(leases))
		for p, l := range leases {
			v.Leases[p] = l.Owner
		}
	}
	st := v.Step(partitions)
	a.orphans = st.Orphans

	a.mu.Lock()
	var drop []*runner
	for _, p := range st.Release {
		if r, ok := a.runners[p]; ok {
			drop = append(drop, r)
		}
	}
	a.mu.Unlock()
	for _, r := range drop {
		a.log.Info("handing partition over", zap.Int("partition", r.partition))
		a.releasePartition(r, true)
	}
	st.Takes(len(v.Held)-len(drop), func(p int) bool {
		return ctx.Err() == nil && a.takePartition(ctx, p, gone)
	})
}

// takePartition takes partition p's lease (at once from an agent in gone)
// and starts consuming it, and reports whether it did.
func (a *lane) takePartition(ctx context.Context, p int, gone map[string]time.Time) bool {
	sent := time.Now()
	var lease *queue.Lease
	var err error
	if len(gone) > 0 {
		lease, err = a.topo.TakeLease(ctx, p, a.cfg.Name, gone)
	} else {
		lease, err = a.topo.AcquireLease(ctx, p, a.cfg.Name)
	}
	if err != nil {
		if !errors.Is(err, queue.ErrLeaseHeld) && ctx.Err() == nil {
			a.log.Warn("acquire lease", zap.Int("partition", p), zap.Error(err))
		}
		return false // the old owner is draining, or its lease has not expired yet
	}
	cons, err := a.topo.PartitionConsumer(ctx, p)
	if err != nil {
		a.log.Warn("partition consumer", zap.Int("partition", p), zap.Error(err))
		_ = a.topo.ReleaseLease(ctx, lease)
		return false
	}
	a.mu.Lock()
	a.runners[p] = a.newRunner(p, cons, lease, sent)
	a.mu.Unlock()
	a.log.Debug("took partition", zap.Int("partition", p))
	return true
}

// releasePartition removes r from the owned set and drains it in the
// background; once its running jobs are done, the sessions it served are
// ended on their workers (another agent may run them next, so the state here
// is stale) and, if release is set, the lease is deleted so the new owner can
// take it without waiting for expiry. Meanwhile its held jobs are kept alive
// (keepAliveLoop) and, if release is set, its lease is renewed
// (renewLeases): the partition moves only once the drain has ended.
func (a *lane) releasePartition(r *runner, release bool) {
	a.mu.Lock()
	if a.runners[r.partition] != r {
		a.mu.Unlock()
		return
	}
	delete(a.runners, r.partition)
	if a.handing == nil {
		a.handing = make(map[int]*runner)
	}
	a.handing[r.partition] = r
	r.leaseMu.Lock()
	r.handover = release
	r.leaseMu.Unlock()
	a.mu.Unlock()
	a.draining.Add(1)
	go func() {
		defer a.draining.Done()
		defer func() {
			a.mu.Lock()
			delete(a.handing, r.partition)
			a.mu.Unlock()
		}()
		r.drain(a.baseCtx)
		r.leaseMu.Lock()
		defer r.leaseMu.Unlock()
		if release && !r.released && a.baseCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(a.baseCtx, 5*time.Second)
			defer cancel()
			if err := a.topo.ReleaseLease(ctx, r.lease); err != nil && !errors.Is(err, queue.ErrLeaseLost) {
				a.log.Warn("release lease", zap.Int("partition", r.partition), zap.Error(err))
			}
		}
		r.released = true
	}()
}

func (a *lane) ownedLocked() []int {
	out := make([]int, 0, len(a.runners))
	for p := range a.runners {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
