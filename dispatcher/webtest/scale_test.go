package webtest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

// Scale of TestDashboardScale: 20 agents of 25 workers, 500 sessions each
// (10,000 live sessions).
const (
	scaleAgents   = 20
	scaleWorkers  = 25
	scaleSessions = 500
)

// TestDashboardScale measures the dashboard at fleet scale: the time to the
// first render of all agents and workers in Chromium, and the CPU the
// dispatcher (a real `dispatcher serve` process) spends on the per-second
// refresh while a page watches. Twenty real agents with 500 workers do not
// fit on a small CI machine, so the agents are simulated: real NATS micro
// services named procfleet-agent answering $SRV.STATS with the info a real
// agent sends (agent.ServiceInfo), with counters and RSS that change every
// second. A measurement, not a timed unit test: it runs only with
// PROCFLEET_SCALE=1 and prints its numbers (README "Dashboard").
//
//	PROCFLEET_SCALE=1 go test -run TestDashboardScale -v ./dispatcher/webtest
func TestDashboardScale(t *testing.T) {
	if os.Getenv("PROCFLEET_SCALE") != "1" {
		t.Skip("a measurement: set PROCFLEET_SCALE=1 to run it")
	}
	bctx := browser(t)
	srv := fleettest.StartServer(t)
	nc := srv.Connect(t)
	for i := 1; i <= scaleAgents; i++ {
		simulateAgent(t, nc, fmt.Sprintf("sim-%02d", i))
	}

	// The dispatcher as its own process, so that its CPU is its own.
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "dispatcher")
	build := exec.Command("go", "build", "-o", bin, "./cmd/dispatcher")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "serve", "--nats", srv.URL, "--http", addr)
	cmd.Env = append(os.Environ(), "PROCFLEET_HTTP_TOKEN="+tokAll)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	base := "http://" + addr
	sharedtest.Eventually(t, 30*time.Second, func() error {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthz %d", resp.StatusCode)
		}
		return nil
	})

	// Baseline: no page open.
	idle := cpuOver(t, cmd.Process.Pid, 10*time.Second)

	// Sign in once; then time a fresh load of the page to its first full
	// render (every agent and the first page of workers).
	run(t, bctx, 30*time.Second, "sign-in page",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), tokAll),
	)
	// Cold: the first page the dispatcher serves waits for its first
	// gathering of the agents (at most one tick).
	coldStart := time.Now()
	run(t, bctx, 30*time.Second, "sign in",
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS(`#agents tbody tr[data-agent="sim-20"]`)),
	)
	cold := time.Since(coldStart)
	var renders []time.Duration
	for range 3 {
		start := time.Now()
		run(t, bctx, 30*time.Second, "reload",
			chromedp.Navigate(base+"/"),
			chromedp.WaitVisible(chromedp.CSS(`#agents tbody tr[data-agent="sim-20"]`)),
		)
		waitJS(t, bctx, 10*time.Second, "25 worker rows and 10,000 sessions",
			`document.querySelectorAll("#workers tbody tr").length === 25 && document.getElementById("c-sessions").textContent === "10,000"`)
		renders = append(renders, time.Since(start))
	}
	inPage, err := eval[float64](bctx, `window.procfleetFirstRender || 0`)
	if err != nil {
		t.Fatal(err)
	}
	watched := cpuOver(t, cmd.Process.Pid, 30*time.Second)
	size, err := eval[float64](bctx, `window.procfleetLastSnapBytes || 0`)
	if err != nil {
		t.Fatal(err)
	}
	report := fmt.Sprintf("dashboard scale: %d agents, %d workers, %d sessions\n"+
		"  cold first render (sign-in click to all agents, first page since the dispatcher started): %v\n"+
		"  first render (navigate to all agents + 25 worker rows), 3 loads: %v\n"+
		"  in-page first render after navigation start: %.0f ms\n"+
		"  dispatcher CPU, no page open:          %.2f %% of a core\n"+
		"  dispatcher CPU, one page watching:     %.2f %% of a core\n"+
		"  last delta over SSE: %.0f bytes\n",
		scaleAgents, scaleAgents*scaleWorkers, scaleAgents*scaleSessions, cold.Round(time.Millisecond), renders, inPage, idle, watched, size)
	fmt.Print(report)
	t.Log(report)
	if strings.Contains(logs.String(), "panic") {
		t.Fatalf("dispatcher log:\n%s", logs.String())
	}
}

// cpuOver returns the CPU the process pid used over d, in percent of one
// core (utime+stime from /proc/<pid>/stat, clock ticks of 10 ms).
func cpuOver(t *testing.T, pid int, d time.Duration) float64 {
	t.Helper()
	ticks := func() int64 {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatal(err)
		}
		// Fields after the command name, which is in parentheses.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		return u + s
	}
	t0, c0 := time.Now(), ticks()
	time.Sleep(d) // a measurement window, not a synchronisation
	c1 := ticks()
	return float64(c1-c0) * 10 / float64(time.Since(t0).Milliseconds()) * 100
}

// simulateAgent registers a NATS micro service that answers like agent
// name: 25 workers, 500 sessions, counters that grow and RSS that moves.
func simulateAgent(t *testing.T, conn *nats.Conn, name string) {
	t.Helper()
	started := time.Now().Add(-time.Duration(rand.IntN(3600)) * time.Second)
	var jobs atomic.Uint64
	info := func() agent.ServiceInfo {
		n := jobs.Add(uint64(50 + rand.IntN(50)))
		workers := make([]agent.WorkerRow, scaleWorkers)
		busy := 0
		for i := range workers {
			st := "idle"
			cur := ""
			if rand.IntN(3) == 0 {
				st, cur = "busy", fmt.Sprintf("job-%s-%d", name, n+uint64(i))
				busy++
			}
			workers[i] = agent.WorkerRow{ID: fmt.Sprintf("%s-%d", name, i+1), PID: 10000 + i, State: st,
				RSS: int64(60+rand.IntN(40)) << 20, Jobs: int(n)/scaleWorkers + i, Sessions: scaleSessions / scaleWorkers,
				StartedAt: started, CurrentJob: cur}
		}
		parts := []int{}
		for p := range 64 {
			if p%scaleAgents == int(name[len(name)-1]-'0')%scaleAgents {
				parts = append(parts, p)
			}
		}
		return agent.ServiceInfo{
			Agent: queue.AgentInfo{Name: name, Host: "host-" + name, PID: 4242, StartedAt: started, Workers: scaleWorkers,
				Busy: busy, Idle: scaleWorkers - busy, Sessions: scaleSessions, Partitions: parts},
			Pool:       agent.PoolSummary{Size: scaleWorkers, Busy: busy, Idle: scaleWorkers - busy, Sessions: scaleSessions, Checkouts: n},
			Counters:   agent.Counters{Succeeded: n},
			Capacity:   scaleWorkers,
			Partitions: parts,
			Workers:    workers,
		}
	}
	svc, err := micro.AddService(conn, micro.Config{
		Name: "procfleet-agent", Version: agent.Version,
		StatsHandler: func(*micro.Endpoint) any { return info() },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.AddGroup("fleet.agent."+name).AddEndpoint("info", micro.HandlerFunc(func(req micro.Request) {
		_ = req.RespondJSON(info())
	})); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })
}
