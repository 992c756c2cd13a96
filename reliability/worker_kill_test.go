package reliability_test

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/queue"
)

// fastFleet is a fleet of in-process agents with a short AckWait and retry
// backoff, whose helper workers log their executions. The lease TTL is the
// default: at 2 s a renewal that a starved machine (this suite runs its
// tests side by side) delays past it can move a partition, and its
// sessions, with no fault to explain it.
func fastFleet(t *testing.T, agents, workers int) (fleettest.FleetConfig, string) {
	t.Helper()
	// Worker deaths are the point here; only errors are worth a log line.
	cfg := fleettest.FleetConfig{Agents: agents, Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))}
	cfg.Agent.Queue = queue.Config{Partitions: 16, AgentTTL: 3 * time.Second, AckWait: 3 * time.Second}
	cfg.Agent.Pool.Size = workers
	cfg.Agent.RetryBackoffMin = 20 * time.Millisecond
	cfg.Agent.RetryBackoffMax = 500 * time.Millisecond
	cfg.Agent.RebalanceInterval = 200 * time.Millisecond
	execLog := filepath.Join(t.TempDir(), "exec.log")
	cfg.Agent.Pool.Worker.Command, cfg.Agent.Pool.Worker.Env = fleettest.HelperWorker(testworker.ExecLog(execLog))
	return cfg, execLog
}

// killer SIGKILLs a random worker of a random agent every interval,
// preferring busy ones, until stopped or limit kills.
type killer struct {
	mu     sync.Mutex
	killed map[int]time.Time
	stop   chan struct{}
	done   chan struct{}
}

func startKiller(agents []*agent.Agent, interval time.Duration, limit int, seed uint64) *killer {
	k := &killer{killed: map[int]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(seed, 0))
	go func() {
		defer close(k.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for n := 0; n < limit; {
			select {
			case <-k.stop:
				return
			case <-t.C:
			}
			a := agents[rng.IntN(len(agents))]
			var busy []int
			for _, w := range a.Pool().Stats().Workers {
				if w.PID > 0 && w.State == "busy" {
					busy = append(busy, w.PID)
				}
			}
			if len(busy) == 0 {
				continue
			}
			pid := busy[rng.IntN(len(busy))]
			k.mu.Lock()
			k.killed[pid] = time.Now()
			k.mu.Unlock()
			_ = syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}()
	return k
}

func (k *killer) halt() map[int]time.Time {
	select {
	case <-k.stop:
	default:
		close(k.stop)
	}
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.killed
}

// TestWorkerKills SIGKILLs busy workers while two agents work through
// session and anonymous jobs. Every job a kill cut short is retried and
// finishes, and a session whose worker died continues on another worker
// that is told new_session=true.
func TestWorkerKills(t *testing.T) {
	t.Parallel()
	cfg, execLog := fastFleet(t, 2, 3)
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)

	w := workload{prefix: "wk", sessions: 40, perSession: 12, anonymous: 120, command: "sleep", payload: `{"ms":30}`}
	k := startKiller(f.Agents, 150*time.Millisecond, 25, 42)
	t.Cleanup(func() { k.halt() })
	ids := w.submit(t, f.Client)
	poll(t, 2*time.Minute, 100*time.Millisecond, func() error {
		k.mu.Lock()
		n := len(k.killed)
		k.mu.Unlock()
		if n >= 25 {
			return nil
		}
		if done, err := countResults(f.Topology(), ids); err != nil {
			return err
		} else if done < len(ids) {
			return fmt.Errorf("%d kills so far", n)
		}
		return nil
	})
	killed := k.halt()
	results := waitResults(t, f.Topology(), ids, 2*time.Minute)
	requireOK(t, results)

	execs := fleettest.ReadExecLog(t, execLog)
	retried := 0
	for _, id := range ids {
		r := results[id]
		for _, e := range execs[id] {
			if _, ok := killed[e.PID]; !ok || e.PID == r.WorkerPID {
				continue
			}
			// This run was on a worker that was killed, and the job's
			// result came from another: it must be a later attempt.
			retried++
			if r.Attempt <= e.Attempt {
				t.Errorf("job %s: attempt %d ran on killed worker %d, but the result is attempt %d", id, e.Attempt, e.PID, r.Attempt)
			}
		}
	}
	moves := checkSessions(t, results, func(_ string, pid int) bool {
		_, ok := killed[pid]
		return ok
	})
	st := summarizeExecs(execs, ids)
	t.Logf("%d workers killed; %d jobs, 0 lost; %d runs cut short and retried; %d session moves, all with new_session; %d jobs executed more than once",
		len(killed), len(ids), retried, moves, len(st.repeated))
	if retried == 0 || moves == 0 {
		t.Errorf("no job was cut short (%d) or no session moved (%d): the kills missed", retried, moves)
	}
}
