package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"syscall"
	"time"
)

// faults injects a fault every ~FaultInterval until ctx ends, and restarts
// killed agents when their down time is over. It runs on one goroutine, so
// the agent slots need no lock.
func (r *chaosRun) faults(ctx context.Context) error {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, 1))
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	next := time.Now().Add(r.jitter(rng, r.cfg.FaultInterval))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		now := time.Now()
		for _, ca := range r.agents {
			if ca.a == nil && now.After(ca.downTill) {
				// Half the restarts come back under the old name, like a
				// restarted host; the others join as a new agent.
				ca.gen++
				if rng.IntN(2) == 0 {
					ca.name = fmt.Sprintf("agent-%d-r%d", ca.slot, ca.gen)
				}
				if err := r.startAgent(ctx, ca); err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				r.progress("restarted %s", ca.name)
			}
		}
		if now.Before(next) || r.cfg.FaultInterval == 0 {
			continue
		}
		next = now.Add(r.jitter(rng, r.cfg.FaultInterval))
		if rng.Float64() < r.cfg.AgentFaultShare && r.cfg.Agents > 1 && r.allUp() {
			r.killAgent(r.agents[rng.IntN(len(r.agents))], rng)
		} else {
			r.killWorker(rng)
		}
	}
}

// jitter returns d scaled by a random factor in [0.5, 1.5).
func (r *chaosRun) jitter(rng *rand.Rand, d time.Duration) time.Duration {
	return d/2 + time.Duration(rng.Int64N(int64(d)+1))
}

func (r *chaosRun) allUp() bool {
	for _, ca := range r.agents {
		if ca.a == nil {
			return false
		}
	}
	return true
}

func (r *chaosRun) killWorker(rng *rand.Rand) {
	live := r.liveAgents()
	if len(live) == 0 {
		return
	}
	a := live[rng.IntN(len(live))]
	var busy, any []int
	for _, w := range a.Pool().Stats().Workers {
		if w.PID <= 0 {
			continue
		}
		any = append(any, w.PID)
		if w.State == "busy" {
			busy = append(busy, w.PID)
		}
	}
	// Prefer a busy worker: killing one mid-call is the interesting case.
	pids := busy
	if len(pids) == 0 {
		pids = any
	}
	if len(pids) == 0 {
		return
	}
	pid := pids[rng.IntN(len(pids))]
	r.mu.Lock()
	r.killedPIDs[pid] = "worker killed"
	r.events = append(r.events, chaosEvent{At: time.Now(), Kind: "worker-kill", Agent: a.Name(), PIDs: []int{pid}})
	r.mu.Unlock()
	if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
		r.progress("SIGKILL worker pid %d of %s", pid, a.Name())
	}
}

// killAgent crashes an agent: its NATS connection goes first, so nothing
// it would do on the way down (naks, results, lease releases) reaches the
// server, then its workers are killed.
func (r *chaosRun) killAgent(ca *chaosAgent, rng *rand.Rand) {
	var pids []int
	for _, w := range ca.a.Pool().Stats().Workers {
		if w.PID > 0 {
			pids = append(pids, w.PID)
		}
	}
	at := time.Now()
	r.mu.Lock()
	for _, pid := range pids {
		r.killedPIDs[pid] = "agent killed"
	}
	r.events = append(r.events, chaosEvent{At: at, Kind: "agent-kill", Agent: ca.name, PIDs: pids})
	r.mu.Unlock()
	r.fleet.Remove(ca.m)
	ca.nc.Close()
	ca.a.Kill()
	var held []int
	r.mu.Lock()
	for p, st := range r.leaseOwner {
		if st.owner == ca.name {
			held = append(held, p)
		}
	}
	r.kills = append(r.kills, agentKill{at: at, agent: ca.name, partitions: held})
	r.mu.Unlock()
	down := r.cfg.MaxDownTime/10 + time.Duration(rng.Int64N(int64(r.cfg.MaxDownTime)*9/10+1))
	ca.m, ca.a, ca.nc, ca.downTill = nil, nil, nil, time.Now().Add(down)
	r.progress("killed %s (%d workers, %d partitions); restart in %s", ca.name, len(pids), len(held), down.Round(time.Millisecond))
}

// restartAll brings every killed agent back once load has stopped, so that
// the jobs still queued can finish.
func (r *chaosRun) restartAll(ctx context.Context) error {
	for _, ca := range r.agents {
		if ca.a == nil {
			if err := r.startAgent(ctx, ca); err != nil {
				return err
			}
			r.progress("restarted %s", ca.name)
		}
	}
	return nil
}
