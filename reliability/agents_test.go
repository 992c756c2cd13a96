package reliability_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// agentFleet is `dispatcher serve --embedded` in its own process and three
// cmd/agent processes with two helper workers each, all logging executions
// to one file, settled on the default topology.
type agentFleet struct {
	client  *dispatcher.Client
	topo    *queue.Topology
	execLog string
	names   []string
	procs   map[string]*proc
	owners  map[int]string // partition -> agent once settled
}

func startAgentFleet(t *testing.T) *agentFleet {
	t.Helper()
	url := "nats://127.0.0.1:" + strconv.Itoa(freePort(t))
	startServerProc(t, "nats", url, t.TempDir())
	f := &agentFleet{
		client:  connectClient(t, url),
		execLog: filepath.Join(t.TempDir(), "exec.log"),
		names:   []string{"agent-a", "agent-b", "agent-c"},
		procs:   map[string]*proc{},
	}
	f.topo = f.client.Topology()
	for _, n := range f.names {
		f.procs[n] = startAgentProc(t, url, n, 2, f.topo.Config.Partitions, f.execLog)
	}
	f.owners = waitLeases(t, f.topo, f.names, 60*time.Second)
	return f
}

// held returns the partitions victim owns, sorted, and the other agents.
func (f *agentFleet) held(victim string) (parts []int, survivors []string) {
	for p, o := range f.owners {
		if o == victim {
			parts = append(parts, p)
		}
	}
	slices.Sort(parts)
	for _, n := range f.names {
		if n != victim {
			survivors = append(survivors, n)
		}
	}
	return parts, survivors
}

// waitRunningOn waits until one of workers runs a job that has no result
// yet. Only anonymous jobs count ("-a" in their id): the workloads make
// them sleep, so the job is still running when the caller acts, whereas a
// session job finishes at once and may only be waiting for its result to
// be stored.
func (f *agentFleet) waitRunningOn(t *testing.T, col *dispatcher.Collector, workers []int) {
	t.Helper()
	fleettest.Eventually(t, 60*time.Second, func() error {
		for id, runs := range fleettest.ReadExecLog(t, f.execLog) {
			last := runs[len(runs)-1]
			if !strings.Contains(id, "-a") {
				continue
			}
			if _, _, done := col.Result(id); !done && slices.Contains(workers, last.PID) {
				return nil
			}
		}
		return errors.New("no job running on the victim")
	})
}

// waitTakenOver waits until survivors lease every partition in parts and
// returns how long after since that was.
func (f *agentFleet) waitTakenOver(t *testing.T, parts []int, survivors []string, since time.Time) time.Duration {
	t.Helper()
	var took time.Duration
	fleettest.Eventually(t, 30*time.Second, func() error {
		now, err := f.topo.LeaseOwners(t.Context())
		if err != nil {
			return err
		}
		for _, p := range parts {
			if l, ok := now[p]; !ok || !slices.Contains(survivors, l.Owner) {
				return fmt.Errorf("partition %d not yet taken over (lease %+v)", p, l)
			}
		}
		took = time.Since(since)
		return nil
	})
	return took
}
