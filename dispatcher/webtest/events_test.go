package webtest

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// sseEvent is one server-sent event.
type sseEvent struct {
	Event string
	Data  json.RawMessage
}

// openEvents opens GET path as an SSE stream and returns its events.
func openEvents(t *testing.T, ctx context.Context, url, token string) <-chan sseEvent {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		resp.Body.Close()
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sseEvent, 64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 8<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev.Event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.Data = append(ev.Data, line[6:]...)
			case line == "" && ev.Event != "":
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
				ev = sseEvent{}
			}
		}
	}()
	t.Cleanup(func() {
		resp.Body.Close()
		<-done
	})
	return out
}

// next returns the next event named one of names, skipping others.
func next(t *testing.T, ch <-chan sseEvent, d time.Duration, names ...string) sseEvent {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended waiting for %v", names)
			}
			for _, n := range names {
				if ev.Event == n {
					return ev
				}
			}
		case <-deadline:
			t.Fatalf("no %v event within %v", names, d)
		}
	}
}

type snap struct {
	Full   bool              `json:"full"`
	Agents []json.RawMessage `json:"agents"`
	Gone   []string          `json:"gone"`
	Queues []struct {
		Name    string `json:"name"`
		Results uint64 `json:"results"`
		Workers int    `json:"workers"`
	} `json:"queues"`
	Point    *struct{ T int64 } `json:"point"`
	Features map[string]bool    `json:"features"`
}

// TestEventsStream pins GET /v1/events: a full snapshot first (agents with
// their worker rows, the queue line, the feature list), then deltas that
// carry only what changed; with ?job=ID the job's progress, its attempt and
// its result arrive on the same stream, progress first.
func TestEventsStream(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleettest.FleetConfig{Agents: 1})
	base := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{HTTPTokens: testTokens()})
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	ch := openEvents(t, ctx, base+"/v1/events", tokRead)
	var first snap
	if err := json.Unmarshal(next(t, ch, 10*time.Second, "snap").Data, &first); err != nil {
		t.Fatal(err)
	}
	if !first.Full || len(first.Agents) != 1 || len(first.Queues) != 1 || first.Queues[0].Workers < 1 || !first.Features["submit"] {
		t.Fatalf("first snapshot: %+v", first)
	}
	var info struct {
		Agent   queue.AgentInfo `json:"agent"`
		Workers []struct {
			PID   int    `json:"pid"`
			State string `json:"state"`
		} `json:"workers"`
	}
	if err := json.Unmarshal(first.Agents[0], &info); err != nil || info.Agent.Name != "agent-1" || len(info.Workers) == 0 {
		t.Fatalf("agent in the snapshot: %s (%v)", first.Agents[0], err)
	}
	// An idle fleet: the next snapshots are deltas without the agent.
	var delta snap
	if err := json.Unmarshal(next(t, ch, 10*time.Second, "snap").Data, &delta); err != nil {
		t.Fatal(err)
	}
	if delta.Full || delta.Point == nil || len(delta.Queues) != 1 {
		t.Fatalf("second snapshot: %+v, want a delta with a chart point", delta)
	}
	// An agent whose info does not change is left out of the deltas (the
	// real agent's race-built workers grow their RSS every second, so a
	// simulated agent with fixed info is the steady one).
	nc := f.Server.Connect(t)
	steady, err := micro.AddService(nc, micro.Config{Name: "procfleet-agent", Version: agent.Version,
		StatsHandler: func(*micro.Endpoint) any {
			return agent.ServiceInfo{Agent: queue.AgentInfo{Name: "steady", Host: "h"}, Pool: agent.PoolSummary{Size: 1}}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = steady.Stop() }()
	if err := steady.AddGroup("fleet.agent.steady").AddEndpoint("info", micro.HandlerFunc(func(req micro.Request) {
		_ = req.Respond([]byte("{}"))
	})); err != nil {
		t.Fatal(err)
	}
	// An agent that missed one scatter-gather (its reply later than the
	// gather waits: a starved machine) is listed as gone and sent again
	// when it answers; a frame marked full (sent to a watcher that fell
	// behind) carries every agent. Neither is a repeat of an unchanged one.
	var appeared, repeated int
	known := false
	for range 5 {
		delta = snap{}
		if err := json.Unmarshal(next(t, ch, 10*time.Second, "snap").Data, &delta); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(delta.Gone, "steady") || delta.Full {
			known = false
		}
		for _, a := range delta.Agents {
			if strings.Contains(string(a), `"name":"steady"`) {
				if known {
					repeated++
				}
				appeared++
				known = true
			}
		}
	}
	if appeared == 0 || repeated != 0 {
		t.Errorf("an unchanged agent was in %d deltas (%d of them repeats), want in the first one after it appeared only", appeared, repeated)
	}

	// Following a job: progress, then its attempt and result.
	jc := openEvents(t, ctx, base+"/v1/events?job=ev-slow", tokRead)
	next(t, jc, 10*time.Second, "snap")
	if _, err := f.Client.Submit(ctx, "s", &queue.Job{ID: "ev-slow", Command: "sleep", Payload: json.RawMessage(`{"MS":1000}`)}); err != nil {
		t.Fatal(err)
	}
	ev := next(t, jc, 15*time.Second, "progress", "attempt", "result")
	if ev.Event != "progress" || string(ev.Data) != `{"pct":50}` {
		t.Fatalf("first job event %s %s, want the progress", ev.Event, ev.Data)
	}
	seen := map[string]bool{}
	for !seen["attempt"] || !seen["result"] {
		ev := next(t, jc, 15*time.Second, "attempt", "result")
		seen[ev.Event] = true
		if !strings.Contains(string(ev.Data), `"ev-slow"`) {
			t.Fatalf("%s event of another job: %s", ev.Event, ev.Data)
		}
	}
	if code, _, _ := get(t, http.MethodGet, base+"/v1/events?job=bad.id", tokRead); code != http.StatusBadRequest {
		t.Errorf("GET /v1/events?job=bad.id: %d, want 400", code)
	}
}
