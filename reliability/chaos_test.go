package reliability_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/cmd/dispatcher/chaos"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
)

// chaosDuration is 60s, 5s with -short, or PROCFLEET_CHAOS_DURATION.
func chaosDuration(t *testing.T) time.Duration {
	t.Helper()
	if v := os.Getenv("PROCFLEET_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("PROCFLEET_CHAOS_DURATION=%q: %v", v, err)
		}
		return d
	}
	if testing.Short() {
		return 5 * time.Second
	}
	return time.Minute
}

// lineWriter sends each line written to it to t.Log.
type lineWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.t.Log(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
}

// TestChaos runs chaos.Run (dispatcher chaos): load on three in-process agents while
// workers and agents are killed and restarted at random, then reconciles
// every job. Nothing may be lost, every move of a session must be traced to
// a fault, every rebinding must carry new_session, and no job may run twice
// unless a kill cut its earlier run short. PROCFLEET_CHAOS_SEED replays a
// run.
func TestChaos(t *testing.T) {
	t.Parallel()
	d := chaosDuration(t)
	var seed uint64
	if v := os.Getenv("PROCFLEET_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("PROCFLEET_CHAOS_SEED=%q: %v", v, err)
		}
	}
	execLog := filepath.Join(t.TempDir(), "exec.log")
	argv, env := fleettest.HelperWorker(testworker.ExecLog(execLog))
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), d+5*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, chaos.Config{
		Duration: d, Seed: seed,
		WorkerCmd: argv, WorkerEnv: env, ExecLog: execLog,
		Command: "sleep", Payload: json.RawMessage(`{"ms":5}`),
		Out: &out, Progress: &lineWriter{t: t},
		Logger: zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)),
	})
	t.Log(out.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Lost != 0 {
		t.Errorf("%d jobs lost", rep.Lost)
	}
	if rep.Accepted == 0 || rep.WorkerKills == 0 {
		t.Errorf("no load (%d jobs) or no faults (%d worker kills)", rep.Accepted, rep.WorkerKills)
	}
	if rep.Untraced != 0 {
		t.Errorf("%d affinity breaks with no fault to explain them", rep.Untraced)
	}
	if rep.RebindWithoutNewSession != 0 {
		t.Errorf("%d sessions moved to a worker without new_session=true", rep.RebindWithoutNewSession)
	}
	if rep.Repeated != rep.RepeatedAfterKill {
		t.Errorf("%d jobs ran more than once although no kill cut their earlier run short", rep.Repeated-rep.RepeatedAfterKill)
	}
	// The 10s failover target is asserted by TestAgentCrash, on processes.
	// Here agents share this -race process with the rest of the suite, so
	// timers slip; this only catches partitions that never move.
	if rep.LongestFailover > 20*time.Second {
		t.Errorf("longest failover %s: partitions were stuck", rep.LongestFailover)
	}
	if d >= 30*time.Second && rep.AgentKills == 0 {
		t.Errorf("no agent was killed in %s", d)
	}
}

// TestChaosCommand runs `dispatcher chaos` as users do, with its built-in
// worker (the dispatcher binary itself), and checks its report and exit
// status.
func TestChaosCommand(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t, "dispatcher"), "chaos", "--duration", "4s", "--agents", "2", "--fault-interval", "500ms")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if err != nil {
		t.Fatalf("dispatcher chaos: %v", err)
	}
	for _, want := range []string{"procfleet chaos report", "lost:              0", "[from the workers' execution log]", "untraced 0"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
