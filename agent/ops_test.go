package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// scrape fetches url and returns the value of the first sample matching
// name{labels} (labels as written in the exposition format).
func scrape(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+-]+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetricsMoveAsJobsRun(t *testing.T) {
	t.Parallel()
	reg := cli.NewRegistry()
	cfg := fleetConfig(1, 2)
	cfg.Agent.Registerer = reg
	f := fleettest.StartFleet(t, cfg)
	ms, err := cli.ServeMetrics("127.0.0.1:0", reg, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ms.Close(context.Background()) })
	url := "http://" + ms.Addr + "/metrics"

	if v := scrape(t, url, `procfleet_jobs_total{outcome="ok",queue="default"}`); v != 0 {
		t.Fatalf("ok jobs before any job = %v", v)
	}
	if v := scrape(t, url, `procfleet_workers{queue="default",state="idle"}`); v != 2 {
		t.Fatalf("idle workers = %v, want 2", v)
	}
	for i := range 5 {
		result(t, f, submit(t, f, fmt.Sprintf("m%d", i), &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)}))
	}
	result(t, f, submit(t, f, "m0", &queue.Job{Command: "fail"}))
	fleettest.Eventually(t, 10*time.Second, func() error {
		if v := scrape(t, url, `procfleet_jobs_total{outcome="ok",queue="default"}`); v != 5 {
			return fmt.Errorf("ok jobs = %v", v)
		}
		if v := scrape(t, url, `procfleet_jobs_total{outcome="app_error",queue="default"}`); v != 1 {
			return fmt.Errorf("app_error jobs = %v", v)
		}
		return nil
	})
	if v := scrape(t, url, `procfleet_job_duration_seconds_count{outcome="ok",queue="default"}`); v != 5 {
		t.Errorf("duration samples = %v, want 5", v)
	}
	if v := scrape(t, url, `procfleet_checkout_wait_seconds_count{queue="default"}`); v != 6 {
		t.Errorf("checkout wait samples = %v, want 6", v)
	}
	if v := scrape(t, url, `procfleet_sessions{queue="default"}`); v < 1 {
		t.Errorf("sessions = %v", v)
	}
	// The agent takes its leases in the background (a job's result says
	// only that its own partition is held), and a backlog gauge is left
	// out of a scrape whose consumer info request timed out: poll both.
	fleettest.Eventually(t, 10*time.Second, func() error {
		if v := scrape(t, url, `procfleet_partitions_owned{queue="default"}`); v != 16 {
			return fmt.Errorf("partitions owned = %v, want 16", v)
		}
		if v := scrape(t, url, `procfleet_partition_pending_jobs{partition="any",queue="default"}`); v != 0 {
			return fmt.Errorf("anonymous pending = %v", v)
		}
		return nil
	})
	// A crash moves restarts, redeliveries and dead letters.
	res := result(t, f, submit(t, f, "", &queue.Job{Command: "crash", MaxAttempts: 2}))
	if res.Error == nil || res.Error.Kind != queue.KindExhausted {
		t.Fatalf("crash job: %+v", res)
	}
	fleettest.Eventually(t, 10*time.Second, func() error {
		if v := scrape(t, url, `procfleet_dead_letters_total{kind="exhausted",queue="default"}`); v != 1 {
			return fmt.Errorf("dead letters = %v", v)
		}
		if v := scrape(t, url, `procfleet_redeliveries_total{queue="default"}`); v < 1 {
			return fmt.Errorf("redeliveries = %v", v)
		}
		if v := scrape(t, url, `procfleet_worker_restarts_total{queue="default"}`); v < 2 {
			return fmt.Errorf("restarts = %v", v)
		}
		return nil
	})
}

func TestMicroServiceDiscovery(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleetConfig(2, 1))
	nc := f.Server.Connect(t)
	// Plain nats.go, as `nats micro ls` does it: ping every instance and
	// collect the answers.
	seen := map[string]bool{}
	fleettest.Eventually(t, 20*time.Second, func() error {
		inbox := nc.NewRespInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			return err
		}
		defer func() { _ = sub.Unsubscribe() }()
		if err := nc.PublishRequest("$SRV.PING."+agent.ServiceName, inbox, nil); err != nil {
			return err
		}
		for len(seen) < 2 {
			msg, err := sub.NextMsg(2 * time.Second)
			if err != nil {
				return fmt.Errorf("pings answered by %v: %w", seen, err)
			}
			var ping struct {
				Name     string            `json:"name"`
				Metadata map[string]string `json:"metadata"`
			}
			if err := json.Unmarshal(msg.Data, &ping); err != nil {
				return err
			}
			if ping.Name != agent.ServiceName {
				return fmt.Errorf("ping answered by %q", ping.Name)
			}
			seen[ping.Metadata["agent"]] = true
		}
		return nil
	})
	if !seen["agent-1"] || !seen["agent-2"] {
		t.Fatalf("agents seen: %v", seen)
	}

	result(t, f, submit(t, f, "x", &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)}))
	msg, err := nc.Request("$SRV.STATS."+agent.ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Name      string `json:"name"`
		Endpoints []struct {
			Name    string            `json:"name"`
			Subject string            `json:"subject"`
			Data    agent.ServiceInfo `json:"data"`
		} `json:"endpoints"`
	}
	if err := json.Unmarshal(msg.Data, &stats); err != nil {
		t.Fatal(err)
	}
	if len(stats.Endpoints) != 1 || stats.Endpoints[0].Data.Pool.Size != 1 || stats.Endpoints[0].Data.Agent.Name == "" {
		t.Fatalf("stats: %s", msg.Data)
	}
	info, err := nc.Request("fleet.agent.agent-1.info", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var si agent.ServiceInfo
	if err := json.Unmarshal(info.Data, &si); err != nil || si.Agent.Name != "agent-1" || si.Capacity != 2 {
		t.Fatalf("info: %s (%v)", info.Data, err)
	}
}
