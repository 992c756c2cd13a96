package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// ServerProgram is cmd/dispatcher, whose `serve --embedded` is the NATS
// server the bench starts in a process of its own (ServerCPUs).
var ServerProgram = localfleet.Program{
	Names: []string{"dispatcher", "procfleet-dispatcher"}, PathName: "procfleet-dispatcher",
	Source: filepath.Join("cmd", "dispatcher"),
	Hint:   "install cmd/dispatcher as procfleet-dispatcher or set Config.ServerBin",
}

// child is a process the bench started: the NATS server or an agent.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startChild(name, bin string, args []string, cpus []int) (*child, error) {
	cmd := exec.Command(bin, args...)
	var errBuf bytes.Buffer
	cmd.Stderr = &limitedBuffer{b: &errBuf, max: 8 << 10}
	cmd.SysProcAttr = childProcAttr()
	if err := startPinned(cmd, cpus); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%s exited: %w; stderr: %s", name, err, strings.TrimSpace(errBuf.String()))
		}
		c.err = err
		close(c.done)
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// exited returns the child's exit error once it has exited, else nil.
func (c *child) exited() error {
	select {
	case <-c.done:
		if c.err == nil {
			return fmt.Errorf("%s exited", c.name)
		}
		return c.err
	default:
		return nil
	}
}

// stop sends SIGTERM, waits up to d, then kills the process group.
func (c *child) stop(d time.Duration) {
	_ = terminateChild(c.cmd.Process)
	select {
	case <-c.done:
	case <-time.After(d):
		_ = killChild(c.cmd.Process)
		<-c.done
	}
}

type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startServerProcess runs `<bin> serve --embedded` in a fresh data
// directory, pinned to cpus, and waits until it accepts connections.
// serveFlags are the `dispatcher serve` flags that make the topology qcfg
// asks for.
func serveFlags(qcfg queue.Config) []string {
	var flags []string
	if qcfg.MemoryConsumers {
		flags = append(flags, "--memory-consumers")
	}
	if qcfg.ResultsStorage != "" {
		flags = append(flags, "--results-storage", qcfg.ResultsStorage)
	}
	if qcfg.Partitions > 0 {
		flags = append(flags, "--partitions", strconv.Itoa(qcfg.Partitions))
	}
	if qcfg.ResultsMaxAge > 0 {
		flags = append(flags, "--results-max-age", qcfg.ResultsMaxAge.String())
	}
	return flags
}

func startServerProcess(ctx context.Context, bin, dir string, cpus []int, flags []string) (*child, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := append([]string{"serve", "--embedded", "--listen", addr,
		"--data", filepath.Join(dir, "nats"), "--log-level", "warn"}, flags...)
	c, err := startChild("NATS server", bin, args, cpus)
	if err != nil {
		return nil, "", err
	}
	url := "nats://" + addr
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		if err := c.exited(); err != nil {
			return nil, "", err
		}
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			return c, url, nil
		}
		select {
		case <-ctx.Done():
			c.stop(5 * time.Second)
			return nil, "", fmt.Errorf("NATS server at %s not reachable: %w", url, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// startAgentProcesses runs cfg.Agents cmd/agent processes (inheriting this
// process's CPU affinity) and waits until they hold every partition, each
// its quota (queue.Balanced).
func startAgentProcesses(ctx context.Context, cfg *Config, url string, topo *queue.Topology) ([]*child, error) {
	var kids []*child
	names := make([]string, cfg.Agents)
	for i := range cfg.Agents {
		names[i] = fmt.Sprintf("bench-agent-%d", i+1)
		args := []string{"--nats", url, "--name", names[i], "--pool-size", strconv.Itoa(cfg.Workers),
			"--prefix", topo.Config.Prefix, "--partitions", strconv.Itoa(topo.Config.Partitions),
			"--startup-timeout", "30s", "--log-level", "warn", "--worker-cmd", quoteArgv(cfg.WorkerCmd)}
		if cfg.Capacity > 0 {
			args = append(args, "--capacity", strconv.Itoa(cfg.Capacity))
		}
		c, err := startChild(names[i], cfg.AgentBin, args, nil)
		if err != nil {
			stopChildren(kids)
			return nil, err
		}
		kids = append(kids, c)
	}
	ctx, cancel := context.WithTimeout(ctx, localfleet.DefaultBalanceTimeout)
	defer cancel()
	for {
		var errs []error
		for _, c := range kids {
			errs = append(errs, c.exited())
		}
		if err := errors.Join(errs...); err != nil {
			stopChildren(kids)
			return nil, err
		}
		owners, err := topo.LeaseOwners(ctx)
		if err == nil && balancedLeases(topo.Config.Partitions, names, owners) {
			return kids, nil
		}
		select {
		case <-ctx.Done():
			stopChildren(kids)
			return nil, fmt.Errorf("agent processes not balanced: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func balancedLeases(partitions int, names []string, leases map[int]queue.Lease) bool {
	owners := make(map[int]string, len(leases))
	for p, l := range leases {
		owners[p] = l.Owner
	}
	return queue.Balanced(partitions, names, owners) == nil
}

func stopChildren(kids []*child) {
	for _, c := range slices.Backward(kids) {
		c.stop(30 * time.Second)
	}
}

// quoteArgv joins argv for cli.SplitArgs, single-quoting each word.
func quoteArgv(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// childPIDs lists the children of pid (its workers, for an agent).
func childPIDs(pid int) []int {
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for f := range strings.FieldsSeq(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// loadAvg is /proc/loadavg's three load averages, or "" if unreadable.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// cpusAllowed is pid's Cpus_allowed_list (/proc/<pid>/status), or "".
func cpusAllowed(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
