package chaos

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/procfleet/procfleet/internal/execlog"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

func (r *chaosRun) reconcile(ctx context.Context) (*Report, error) {
	results, err := localfleet.ReadResults(ctx, r.topo)
	if err != nil {
		return nil, err
	}
	var execs map[string][]execlog.Execution
	if r.cfg.ExecLog != "" {
		if execs, err = execlog.Read(r.cfg.ExecLog); err != nil {
			return nil, err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{
		Seed: r.cfg.Seed, Duration: r.cfg.Duration, Agents: r.cfg.Agents, Workers: r.cfg.Workers,
		Accepted: len(r.jobs), Rejected: r.rejected,
		Failed: map[string]int{}, BreaksByCause: map[string]int{},
		ExecCounted: execs != nil,
	}
	for _, e := range r.events {
		switch e.Kind {
		case "worker-kill":
			rep.WorkerKills++
		case "agent-kill":
			rep.AgentKills++
		case "agent-start":
			rep.AgentRestarts++
		}
	}
	rep.AgentRestarts -= r.cfg.Agents

	final := map[string]*queue.Result{}
	ids := make([]string, 0, len(r.jobs))
	for id := range r.jobs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		rs := results[id]
		if len(rs) == 0 {
			rep.Lost++
			if len(rep.LostIDs) < 20 {
				rep.LostIDs = append(rep.LostIDs, id)
			}
			continue
		}
		res := rs[0]
		final[id] = res
		if res.OK {
			rep.OK++
		} else {
			kind := "unknown"
			if res.Error != nil {
				kind = res.Error.Kind
			}
			rep.Failed[kind]++
		}
		if execs == nil {
			if res.Attempt > 1 {
				rep.Repeated++
			}
			continue
		}
		if ex := execs[id]; len(ex) > 1 {
			rep.Repeated++
			explained := true
			for _, e := range ex[:len(ex)-1] {
				if _, ok := r.killedPIDs[e.PID]; !ok {
					explained = false
				}
			}
			if explained {
				rep.RepeatedAfterKill++
			}
		}
	}
	r.traceAffinity(rep, final, execs)
	rep.Reordered = r.countReordered(final, execs)
	r.timeFailovers(rep)
	return rep, nil
}

// countReordered counts session jobs whose final run started (in the
// execution log's order) before the final run of the job before them.
func (r *chaosRun) countReordered(final map[string]*queue.Result, execs map[string][]execlog.Execution) int {
	if execs == nil {
		return -1
	}
	bySession := map[string][]*chaosJob{}
	for _, j := range r.jobs {
		if j.Session != "" && final[j.ID] != nil && len(execs[j.ID]) > 0 {
			bySession[j.Session] = append(bySession[j.Session], j)
		}
	}
	n := 0
	for _, js := range bySession {
		slices.SortFunc(js, func(a, b *chaosJob) int { return cmp.Compare(a.Seq, b.Seq) })
		last := func(j *chaosJob) int { ex := execs[j.ID]; return ex[len(ex)-1].Line }
		for i := 1; i < len(js); i++ {
			if last(js[i]) < last(js[i-1]) {
				n++
			}
		}
	}
	return n
}

// traceAffinity groups every session's jobs into bindings, the runs on one
// worker (agent and pid), and explains each move from one binding to the
// next. Bindings are ordered by their first job's start; within a binding
// the worker runs jobs in order, so its first job must carry new_session.
func (r *chaosRun) traceAffinity(rep *Report, final map[string]*queue.Result, execs map[string][]execlog.Execution) {
	type binding struct {
		agent        string
		pid          int
		first, last  time.Time // first start, last finish
		freshStarted bool      // some job told the worker new_session=true
	}
	bySession := map[string][]*chaosJob{}
	for _, j := range r.jobs {
		if j.Session != "" && final[j.ID] != nil && final[j.ID].OK {
			bySession[j.Session] = append(bySession[j.Session], j)
		}
	}
	for session, js := range bySession {
		slices.SortFunc(js, func(a, b *chaosJob) int { return cmp.Compare(a.Seq, b.Seq) })
		var bs []*binding
		for _, j := range js {
			res := final[j.ID]
			k := slices.IndexFunc(bs, func(b *binding) bool { return b.agent == res.Agent && b.pid == res.WorkerPID })
			if k < 0 {
				bs = append(bs, &binding{agent: res.Agent, pid: res.WorkerPID, first: res.StartedAt, last: res.FinishedAt})
				k = len(bs) - 1
			}
			b := bs[k]
			if res.StartedAt.Before(b.first) {
				b.first = res.StartedAt
			}
			if res.FinishedAt.After(b.last) {
				b.last = res.FinishedAt
			}
			b.freshStarted = b.freshStarted || res.NewSession
		}
		slices.SortFunc(bs, func(a, b *binding) int { return a.first.Compare(b.first) })
		partition := r.topo.PartitionOf(session)
		for i, b := range bs {
			if !b.freshStarted && !rerunHere(js, final, execs, b.pid) {
				rep.RebindWithoutNewSession++
			}
			if i == 0 {
				continue
			}
			rep.AffinityBreaks++
			prev := bs[i-1]
			cause := r.breakCause(partition, prev.pid, prev.last, b.first)
			if cause == "" {
				rep.Untraced++
				continue
			}
			rep.BreaksByCause[cause]++
		}
	}
}

// rerunHere reports whether one of the session's jobs ran on worker pid
// although its stored result came from another worker.
func rerunHere(js []*chaosJob, final map[string]*queue.Result, execs map[string][]execlog.Execution, pid int) bool {
	for _, j := range js {
		if final[j.ID].WorkerPID == pid {
			continue
		}
		for _, e := range execs[j.ID] {
			if e.PID == pid {
				return true
			}
		}
	}
	return false
}

// breakCause names why a session left worker pid (its last job
// there finished at left) for another (first job started at came), or ""
// when nothing explains it.
func (r *chaosRun) breakCause(partition, pid int, left, came time.Time) string {
	if how, ok := r.killedPIDs[pid]; ok {
		return how
	}
	// The lease watcher's times come from the server, and a result's
	// started_at is taken before the job waits for its worker: allow for
	// both around the handover.
	const slack = time.Second
	from, to := left, came
	if came.Before(left) {
		from, to = came, left
	}
	from, to = from.Add(-slack), to.Add(slack)
	for _, c := range r.leaseLog {
		if c.changed && c.partition == partition && !c.at.Before(from) && !c.at.After(to) {
			return "rebalance"
		}
	}
	return ""
}

// timeFailovers measures, per agent kill, how long until every partition
// the victim held had a new lease.
func (r *chaosRun) timeFailovers(rep *Report) {
	for _, k := range r.kills {
		// A lease write under the victim's name only counts once the victim
		// was started again: before that it is a renewal that was in flight
		// when it died.
		back := time.Time{}
		for _, e := range r.events {
			if e.Kind == "agent-start" && e.Agent == k.agent && e.At.After(k.at) {
				back = e.At
				break
			}
		}
		var longest time.Duration
		for _, p := range k.partitions {
			var took time.Duration = -1
			for _, c := range r.leaseLog {
				if c.partition != p || c.owner == "" || !c.at.After(k.at) {
					continue
				}
				if c.owner != k.agent || (!back.IsZero() && c.at.After(back)) {
					took = c.at.Sub(k.at)
					break
				}
			}
			if took < 0 {
				// Never re-leased: report the whole rest of the run, which
				// the reader will see as the outlier it is.
				took = time.Since(k.at)
			}
			longest = max(longest, took)
		}
		rep.Failovers = append(rep.Failovers, longest)
		rep.LongestFailover = max(rep.LongestFailover, longest)
	}
}
