package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

// sessionReply is what the helper worker's "session" command returns.
type sessionReply struct {
	PID        int  `json:"pid"`
	NewSession bool `json:"new_session"`
	Count      int  `json:"count"`
	Seq        int  `json:"seq"`
}

// workload describes a batch of jobs: perSession jobs for each of sessions
// sessions (command "session", payload the job's index in its session),
// interleaved so every partition fills, plus anonymous jobs.
type workload struct {
	prefix                          string
	sessions, perSession, anonymous int
	command                         string // for anonymous jobs; default "echo"
	payload                         string // for anonymous jobs; default {}
}

func (w workload) submissions() []dispatcher.Submission {
	var subs []dispatcher.Submission
	anon := 0
	cmd, payload := w.command, w.payload
	if cmd == "" {
		cmd = "echo"
	}
	if payload == "" {
		payload = "{}"
	}
	for j := range w.perSession {
		for s := range w.sessions {
			subs = append(subs, dispatcher.Submission{
				Session: fmt.Sprintf("%s%d", w.prefix, s),
				Job:     &queue.Job{ID: fmt.Sprintf("%s-%d-%d", w.prefix, s, j), Command: "session", Payload: json.RawMessage(fmt.Sprint(j))},
			})
		}
		// Spread the anonymous jobs through the batch.
		for ; anon < w.anonymous*(j+1)/max(w.perSession, 1); anon++ {
			subs = append(subs, dispatcher.Submission{Job: &queue.Job{ID: fmt.Sprintf("%s-a%d", w.prefix, anon), Command: cmd, Payload: json.RawMessage(payload)}})
		}
	}
	for ; anon < w.anonymous; anon++ {
		subs = append(subs, dispatcher.Submission{Job: &queue.Job{ID: fmt.Sprintf("%s-a%d", w.prefix, anon), Command: cmd, Payload: json.RawMessage(payload)}})
	}
	return subs
}

// submit publishes the workload and returns its job ids in order.
func (w workload) submit(t *testing.T, client *dispatcher.Client) []string {
	t.Helper()
	subs := w.submissions()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := client.SubmitBatch(ctx, subs); err != nil {
		t.Fatalf("submit: %v", err)
	}
	ids := make([]string, len(subs))
	for i, s := range subs {
		ids[i] = s.Job.ID
	}
	return ids
}

// waitResults waits until every id has a result in the results stream and
// returns the first result stored for each. It reads the stream itself, so
// results stored while a subscriber was disconnected count too.
func waitResults(t *testing.T, topo *queue.Topology, ids []string, timeout time.Duration) map[string]*queue.Result {
	t.Helper()
	out := map[string]*queue.Result{}
	var missing []string
	poll(t, timeout, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		all, err := localfleet.ReadResults(ctx, topo)
		if err != nil {
			return err
		}
		missing = missing[:0]
		for _, id := range ids {
			if rs := all[id]; len(rs) > 0 {
				out[id] = rs[0]
			} else {
				missing = append(missing, id)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("%d of %d jobs have no result (lost?), e.g. %v", len(missing), len(ids), missing[:min(len(missing), 10)])
		}
		return nil
	})
	return out
}

// countResults is how many of ids have a result so far.
// countResults counts the ids with a stored result. Its error (a stream
// without a leader for a moment, say) is for the caller's poll to retry.
func countResults(topo *queue.Topology, ids []string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all, err := localfleet.ReadResults(ctx, topo)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, id := range ids {
		if len(all[id]) > 0 {
			n++
		}
	}
	return n, nil
}

// requireOK fails the test for every result that is not ok.
func requireOK(t *testing.T, results map[string]*queue.Result) {
	t.Helper()
	bad := 0
	for id, r := range results {
		if !r.OK {
			bad++
			if bad <= 10 {
				t.Errorf("job %s failed: %+v", id, r.Error)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d failed jobs in all", bad)
	}
}

// execStats summarises the execution log for a set of jobs.
type execStats struct {
	executions int
	repeated   []string // jobs executed more than once
}

func summarizeExecs(execs map[string][]fleettest.Execution, ids []string) execStats {
	var st execStats
	for _, id := range ids {
		st.executions += len(execs[id])
		if len(execs[id]) > 1 {
			st.repeated = append(st.repeated, id)
		}
	}
	slices.Sort(st.repeated)
	return st
}

// checkSessions checks every session's bindings: the jobs of one session
// that ran on one worker (agent and pid). Each binding must start fresh,
// with new_session=true on the job the worker saw first (its count 1), and
// only on that job; and a session may have at most one binding on a worker
// that gone does not account for (a killed worker, a dead agent's worker).
// It returns how many times sessions moved to another worker.
// rerunStarted reports whether a binding whose first run (count 1) left no
// result is explained by at-least-once delivery: that run was the rerun of a
// job a gone agent had finished and stored but not acked, so the result kept
// is the gone agent's and the rerun's was dropped as a duplicate. Then the
// binding's results start at count 2 and the session also ran on a gone
// agent.
func rerunStarted[B comparable](reps []sessionReply, bindings map[B][]*queue.Result, gone func(agent string, pid int) bool, agent string, pid int) bool {
	least := 0
	for _, rep := range reps {
		if least == 0 || rep.Count < least {
			least = rep.Count
		}
	}
	if least != 2 {
		return false
	}
	for _, rs := range bindings {
		for _, r := range rs {
			if (r.Agent != agent || r.WorkerPID != pid) && gone(r.Agent, r.WorkerPID) {
				return true
			}
		}
	}
	return false
}

func checkSessions(t *testing.T, results map[string]*queue.Result, gone func(agent string, pid int) bool) int {
	t.Helper()
	type binding struct {
		agent string
		pid   int
	}
	bySession := map[string]map[binding][]*queue.Result{}
	for _, r := range results {
		if r.Session == "" || !r.OK {
			continue
		}
		if bySession[r.Session] == nil {
			bySession[r.Session] = map[binding][]*queue.Result{}
		}
		b := binding{r.Agent, r.WorkerPID}
		bySession[r.Session][b] = append(bySession[r.Session][b], r)
	}
	moves := 0
	for s, bindings := range bySession {
		moves += len(bindings) - 1
		live := 0
		for b, rs := range bindings {
			if !gone(b.agent, b.pid) {
				live++
			}
			reps := make([]sessionReply, len(rs))
			for i, r := range rs {
				if err := json.Unmarshal(r.Result, &reps[i]); err != nil {
					t.Fatalf("job %s: result %s: %v", r.ID, r.Result, err)
				}
				if reps[i].NewSession != r.NewSession {
					t.Errorf("job %s: the worker saw new_session=%v, the result says %v", r.ID, reps[i].NewSession, r.NewSession)
				}
			}
			first := slices.IndexFunc(reps, func(rep sessionReply) bool { return rep.Count == 1 })
			if first < 0 && !rerunStarted(reps, bindings, gone, b.agent, b.pid) {
				t.Errorf("session %s on %s/%d: no job started it fresh with new_session=true", s, b.agent, b.pid)
			} else if first >= 0 && !reps[first].NewSession {
				t.Errorf("session %s on %s/%d: the job that started it (count 1) was not told new_session=true", s, b.agent, b.pid)
			}
			for i, rep := range reps {
				if i != first && rep.NewSession {
					t.Errorf("session %s on %s/%d: job %s (count %d) was told new_session=true again", s, b.agent, b.pid, rs[i].ID, rep.Count)
				}
			}
		}
		if live > 1 {
			t.Errorf("session %s ran on %d workers that no fault removed: %v", s, live, bindings)
		}
	}
	return moves
}

// poll is fleettest.Eventually with a longer interval, for conditions that
// cost a read of a whole stream.
func poll(t *testing.T, timeout, interval time.Duration, cond func() error) {
	t.Helper()
	if err := sharedtest.Poll(timeout, interval, cond); err != nil {
		t.Fatalf("condition not met within %s: %v", timeout, err)
	}
}
