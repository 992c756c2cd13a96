package agent

import (
	"context"
	"errors"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// membershipLoop keeps the registry entry fresh, renews every queue's
// leases, and reconciles each queue's owned partitions with the rendezvous
// assignment over the live agents serving that queue.
func (a *Agent) membershipLoop() {
	defer a.loops.Done()
	ctx := a.loopCtx
	tick := min(a.cfg.RebalanceInterval, a.cfg.HeartbeatInterval, a.cfg.LeaseRenewInterval)
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastBeat, lastRenew, lastBalance time.Time
	for {
		now := time.Now()
		if now.Sub(lastRenew) >= a.cfg.LeaseRenewInterval {
			for _, l := range a.lanes {
				l.renewLeases(ctx)
			}
			lastRenew = now
		}
		if now.Sub(lastBeat) >= a.cfg.HeartbeatInterval {
			if err := a.heartbeat(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("heartbeat", zap.Error(err))
			}
			lastBeat = now
		}
		if now.Sub(lastBalance) >= a.cfg.RebalanceInterval {
			a.rebalance(ctx)
			lastBalance = now
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// rebalance reads the registry once and rebalances every queue.
func (a *Agent) rebalance(ctx context.Context) {
	infos, err := a.lanes[0].topo.ListAgents(ctx)
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("list agents", zap.Error(err))
		}
		return
	}
	servers := a.servers(infos)
	for _, l := range a.lanes {
		l.rebalance(ctx, servers[l.queueName()])
	}
}

func (a *lane) renewLeases(ctx context.Context) {
	for _, r := range a.runnerList(false) {
		err := a.topo.RenewLease(ctx, r.lease)
		switch {
		case err == nil:
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
}

// rebalance takes the partitions rendezvous hashing over names (the live
// agents serving this queue, sorted) gives this agent and hands back the
// ones it no longer should own.
func (a *lane) rebalance(ctx context.Context, names []string) {
	want := make(map[int]bool)
	for p := range a.cfg.Queue.Partitions {
		if queue.Rendezvous(p, names) == a.cfg.Name {
			want[p] = true
		}
	}

	a.mu.Lock()
	var drop []*runner
	for p, r := range a.runners {
		if !want[p] {
			drop = append(drop, r)
		}
	}
	var take []int
	for p := range want {
		if _, ok := a.runners[p]; !ok {
			take = append(take, p)
		}
	}
	a.mu.Unlock()

	for _, r := range drop {
		a.log.Info("handing partition over", zap.Int("partition", r.partition))
		a.releasePartition(r, true)
	}
	slices.Sort(take)
	for _, p := range take {
		if ctx.Err() != nil {
			return
		}
		lease, err := a.topo.AcquireLease(ctx, p, a.cfg.Name)
		if err != nil {
			if !errors.Is(err, queue.ErrLeaseHeld) && ctx.Err() == nil {
				a.log.Warn("acquire lease", zap.Int("partition", p), zap.Error(err))
			}
			continue // the old owner is draining, or its lease has not expired yet
		}
		cons, err := a.topo.PartitionConsumer(ctx, p)
		if err != nil {
			a.log.Warn("partition consumer", zap.Int("partition", p), zap.Error(err))
			_ = a.topo.ReleaseLease(ctx, lease)
			continue
		}
		a.mu.Lock()
		a.runners[p] = a.newRunner(p, cons, lease)
		a.mu.Unlock()
		a.log.Debug("took partition", zap.Int("partition", p))
	}
}

// releasePartition removes r from the owned set and drains it in the
// background; once its running jobs are done, the sessions it served are
// ended on their workers (another agent may run them next, so the state here
// is stale) and, if release is set, the lease is deleted so the new owner can
// take it without waiting for expiry.
func (a *lane) releasePartition(r *runner, release bool) {
	a.mu.Lock()
	if a.runners[r.partition] != r {
		a.mu.Unlock()
		return
	}
	delete(a.runners, r.partition)
	a.mu.Unlock()
	a.draining.Add(1)
	go func() {
		defer a.draining.Done()
		r.drain(a.baseCtx)
		if release && a.baseCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(a.baseCtx, 5*time.Second)
			defer cancel()
			if err := a.topo.ReleaseLease(ctx, r.lease); err != nil && !errors.Is(err, queue.ErrLeaseLost) {
				a.log.Warn("release lease", zap.Int("partition", r.partition), zap.Error(err))
			}
		}
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
