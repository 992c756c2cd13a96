package bench

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// meter samples this process's CPU and peak RSS, and the workers' CPU,
// over one measurement.
type meter struct {
	cpu0   time.Duration
	wcpu0  map[int]time.Duration
	server int // pid of the NATS server process, or 0
	scpu0  time.Duration
	sio0   int64
	agents map[int]time.Duration // agent process pid: CPU at the start
	aio0   map[int]int64         // agent process pid: syscalls at the start
	peak   atomic.Int64
	// agentPeak is the largest sum of the agent processes' RSS sampled.
	agentPeak atomic.Int64
	stop      chan struct{}
	stopped   chan struct{}
}

// startMeter starts measuring this process, the workers (pids) and, apart,
// the NATS server process (server; 0: none) and agent processes.
func startMeter(pids []int, server int, agents []int) *meter {
	m := &meter{cpu0: selfCPU(), wcpu0: map[int]time.Duration{}, stop: make(chan struct{}), stopped: make(chan struct{})}
	for _, pid := range pids {
		m.wcpu0[pid] = procCPU(pid)
	}
	m.parts(server, agents)
	m.peak.Store(selfRSS())
	m.agentPeak.Store(m.agentsRSS())
	go func() {
		defer close(m.stopped)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-t.C:
				if r := selfRSS(); r > m.peak.Load() {
					m.peak.Store(r)
				}
				if r := m.agentsRSS(); r > m.agentPeak.Load() {
					m.agentPeak.Store(r)
				}
			}
		}
	}()
	return m
}

// parts adds the NATS server process (pid 0: none) and agent processes,
// whose CPU is measured apart.
func (m *meter) parts(server int, agents []int) {
	m.server = server
	if server > 0 {
		m.scpu0, m.sio0 = procCPU(server), procSyscalls(server)
	}
	m.agents, m.aio0 = map[int]time.Duration{}, map[int]int64{}
	for _, pid := range agents {
		m.agents[pid], m.aio0[pid] = procCPU(pid), procSyscalls(pid)
	}
}

// end stops the meter and fills run's CPU and RSS figures. Worker CPU is
// read before the workers stop, so their shutdown is not counted.
func (m *meter) end(run *Measurement) {
	close(m.stop)
	<-m.stopped
	run.CPUSelf = selfCPU() - m.cpu0
	for pid, c0 := range m.wcpu0 {
		if c := procCPU(pid); c >= c0 {
			run.CPUWorkers += c - c0
		}
	}
	if m.server > 0 {
		run.CPUServer = max(procCPU(m.server)-m.scpu0, 0)
		run.SyscallsServer = max(procSyscalls(m.server)-m.sio0, 0)
	}
	for pid, c0 := range m.agents {
		run.CPUAgents += max(procCPU(pid)-c0, 0)
		run.SyscallsAgents += max(procSyscalls(pid)-m.aio0[pid], 0)
	}
	run.PeakRSS = max(m.peak.Load(), selfRSS())
	run.AgentPeakRSS = max(m.agentPeak.Load(), m.agentsRSS())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is USER_HZ, the unit of /proc/<pid>/stat times; 100 on every
// Linux platform Go supports.
const clockTick = 100

// procCPU reads utime+stime of pid; 0 if it cannot.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses; fields resume
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTick
}

// procSyscalls is the read and write system calls pid has made (syscr +
// syscw of /proc/<pid>/io, all its threads; socket and pipe I/O included);
// 0 if unreadable. Unlike CPU time it does not move with the machine's
// load, so it shows a change in batching that the noise of CPU times hides.
func procSyscalls(pid int) int64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	if err != nil {
		return 0
	}
	var n int64
	for line := range strings.SplitSeq(string(b), "\n") {
		if name, v, ok := strings.Cut(line, ": "); ok && (name == "syscr" || name == "syscw") {
			c, _ := strconv.ParseInt(v, 10, 64)
			n += c
		}
	}
	return n
}

// agentsRSS is the sum of the agent processes' VmRSS.
func (m *meter) agentsRSS() int64 {
	var n int64
	for pid := range m.agents {
		n += procRSS(strconv.Itoa(pid))
	}
	return n
}

// selfRSS is VmRSS of this process in bytes.
func selfRSS() int64 { return procRSS("self") }

// procRSS is VmRSS of /proc/<pid> in bytes; 0 if unreadable.
func procRSS(pid string) int64 {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
