package reliability_test

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/queue"
)

// The programs under test are built once per test binary, on first use, so
// that a -run selecting only in-process tests does not pay for the build.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func removeBinaries() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// binary returns the path of cmd/<name> ("agent" or "dispatcher"), built
// without -race: the processes are the subject, not the race detector's.
func binary(t *testing.T, name string) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "procfleet-reliability-")
		if buildErr != nil {
			return
		}
		for _, cmd := range []string{"agent", "dispatcher"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, cmd),
				"github.com/procfleet/procfleet/cmd/"+cmd).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build cmd/%s: %v\n%s", cmd, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, name)
}

// proc is a program under test running in its own process.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  string // file holding its stdout and stderr
	done chan struct{}
	err  error // set before done closes
}

// startProc starts bin with args and env (nil: this process's), logging to
// a file that is printed if the test fails. On cleanup a process still
// running gets SIGTERM, then SIGKILL after grace.
func startProc(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(20 * time.Second)
		// RELIABILITY_AGENT_LOG (a log level for agent processes) also
		// shows the output of tests that pass.
		if t.Failed() || os.Getenv("RELIABILITY_AGENT_LOG") != "" {
			if b, err := os.ReadFile(out); err == nil && len(b) > 0 {
				t.Logf("--- output of %s (pid %d):\n%s", name, cmd.Process.Pid, tail(b, 200000))
			}
		}
	})
	return p
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.kill()
	}
}

// startAgentProc runs cmd/agent with workers helper workers that log their
// executions to execLog.
func startAgentProc(t *testing.T, url, name string, workers, partitions int, execLog string, extra ...string) *proc {
	t.Helper()
	argv, env := fleettest.HelperWorker(testworker.ExecLog(execLog))
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = "'" + a + "'"
	}
	args := []string{
		"--nats", url, "--name", name,
		"--worker-cmd", strings.Join(quoted, " "),
		"--pool-size", strconv.Itoa(workers),
		"--partitions", strconv.Itoa(partitions),
		"--log-level", cmp.Or(os.Getenv("RELIABILITY_AGENT_LOG"), "warn"),
	}
	// The agent hands workers only an allowlist of its environment; the
	// helper's switches go through --worker-env.
	for _, kv := range env {
		if strings.HasPrefix(kv, testworker.EnvHelper) || strings.HasPrefix(kv, "GORACE=") {
			args = append(args, "--worker-env", kv)
		}
	}
	return startProc(t, name, binary(t, "agent"), nil, append(args, extra...)...)
}

// startServerProc runs `dispatcher serve --embedded` listening on url (a
// nats://127.0.0.1:port URL) with JetStream (file storage) in dataDir: a
// nats-server in a process of its own that the test can stop and start
// again. serve also creates the default topology.
func startServerProc(t *testing.T, name, url string, dataDir string) *proc {
	t.Helper()
	// Not the helper-worker environment: the dispatcher binary would turn
	// into a test worker under PROCFLEET_TESTWORKER=1.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, testworker.EnvHelper) {
			env = append(env, kv)
		}
	}
	addr := strings.TrimPrefix(url, "nats://")
	p := startProc(t, name, binary(t, "dispatcher"), env, "serve", "--embedded",
		"--listen", addr, "--data", dataDir, "--log-level", "warn")
	fleettest.Eventually(t, 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("%s exited: %v", name, p.err)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return p
}

// connectClient connects to url, reconnecting forever, and opens the
// fleet's topology once `serve` has created it.
func connectClient(t *testing.T, url string) *dispatcher.Client {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(t.Name()), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	var client *dispatcher.Client
	fleettest.Eventually(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		client, err = dispatcher.NewClient(ctx, nc, queue.Config{})
		return err
	})
	return client
}

// freePort returns a loopback TCP port nobody listened on a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// procStat returns a process's state letter and parent pid from
// /proc/<pid>/stat, or ok false when the process does not exist.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+4 > len(b) {
		return 0, 0, false
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(fields[1])
	return fields[0][0], ppid, true
}

// gone reports whether pid has ended. A zombie counts as ended: it runs
// nothing and holds nothing; only its exit status waits for a reaper (the
// container's init, which may be slow to reap).
func gone(pid int) bool {
	state, _, ok := procStat(pid)
	return !ok || state == 'Z' || state == 'X'
}

// childrenOf lists the live child processes of pid.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, ppid, ok := procStat(n); ok && ppid == pid && state != 'Z' {
			out = append(out, n)
		}
	}
	return out
}

// waitGone fails the test unless every pid has ended within timeout.
func waitGone(t *testing.T, pids []int, timeout time.Duration) {
	t.Helper()
	fleettest.Eventually(t, timeout, func() error {
		for _, pid := range pids {
			if !gone(pid) {
				return fmt.Errorf("process %d is still running (orphan)", pid)
			}
		}
		return nil
	})
}

// sleepCtx waits d unless ctx ends first; it paces load, never
// synchronisation.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
