package reliability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// submitter publishes jobs one by one at a steady pace. A publish that
// fails (the server is down) is retried under the same id until the stream
// acknowledges it: the stream deduplicates, so a job is accepted once.
type submitter struct {
	mu       sync.Mutex
	accepted []string
	failures int
	done     chan struct{}
}

func startSubmitter(ctx context.Context, topo *queue.Topology, prefix string, n, sessions int, every time.Duration) *submitter {
	s := &submitter{done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for i := 0; i < n; i++ {
			job := &queue.Job{ID: prefix + "-" + strconv.Itoa(i), Command: "sleep", Payload: json.RawMessage(`{"ms":10}`)}
			session := ""
			if i%5 != 0 {
				session = fmt.Sprintf("%s%d", prefix, i%sessions)
			}
			for {
				pctx, cancel := context.WithTimeout(ctx, time.Second)
				_, err := topo.Submit(pctx, session, job)
				cancel()
				if err == nil {
					break
				}
				s.mu.Lock()
				s.failures++
				s.mu.Unlock()
				if !sleepCtx(ctx, 100*time.Millisecond) {
					return
				}
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, job.ID)
			s.mu.Unlock()
			if !sleepCtx(ctx, every) {
				return
			}
		}
	}()
	return s
}

func (s *submitter) count() (accepted, failures int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accepted), s.failures
}

// TestNATSRestart stops the NATS server (its own process, JetStream on file
// storage) twice while jobs are submitted and run: once gracefully (SIGTERM)
// and once with SIGKILL. Agent processes and the test's client reconnect,
// and every job the stream accepted gets its result.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	data := t.TempDir()
	srv := startServerProc(t, "nats-1", url, data)
	client := connectClient(t, url)
	topo := client.Topology()
	execLog := filepath.Join(t.TempDir(), "exec.log")
	names := []string{"agent-a", "agent-b"}
	agents := map[string]*proc{}
	for _, n := range names {
		agents[n] = startAgentProc(t, url, n, 2, 64, execLog)
	}
	waitLeases(t, topo, names, 60*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := startSubmitter(ctx, topo, "nr", 600, 30, 5*time.Millisecond)
	t.Cleanup(func() {
		cancel()
		<-sub.done
	})

	for round, hard := range []bool{false, true} {
		target := 150 * (round + 1)
		fleettest.Eventually(t, 60*time.Second, func() error {
			if n, _ := sub.count(); n < target {
				return fmt.Errorf("%d jobs accepted", n)
			}
			return nil
		})
		down := time.Now()
		if hard {
			srv.kill()
		} else {
			srv.stop(30 * time.Second)
		}
		before, failed := sub.count()
		// Stay down until the submitter has failed a few times.
		fleettest.Eventually(t, 10*time.Second, func() error {
			if _, f := sub.count(); f < failed+3 {
				return fmt.Errorf("%d publishes failed while down", f-failed)
			}
			return nil
		})
		srv = startServerProc(t, fmt.Sprintf("nats-%d", round+2), url, data)
		t.Logf("server %s down for %s (%d jobs accepted before)", map[bool]string{false: "stopped", true: "killed"}[hard],
			time.Since(down).Round(time.Millisecond), before)
	}
	select {
	case <-sub.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the submitter did not finish")
	}
	accepted, failures := sub.count()
	if accepted != 600 {
		t.Fatalf("%d jobs accepted, want 600", accepted)
	}
	sub.mu.Lock()
	ids := append([]string(nil), sub.accepted...)
	sub.mu.Unlock()
	results := waitResults(t, topo, ids, 2*time.Minute)
	requireOK(t, results)
	for n, p := range agents {
		if p.exited() {
			t.Errorf("agent %s exited: %v", n, p.err)
		}
	}
	st := summarizeExecs(fleettest.ReadExecLog(t, execLog), ids)
	t.Logf("%d jobs accepted (%d publishes failed and were retried), 0 lost; %d executions, %d jobs executed more than once",
		accepted, failures, st.executions, len(st.repeated))
}
