package fleettest_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

func TestStartPoolIsReady(t *testing.T) {
	t.Parallel()
	var cfg pool.Config
	cfg.Size = 3
	cfg.Worker.Command, cfg.Worker.Env = fleettest.HelperWorker()
	p := fleettest.StartPool(t, cfg)
	if st := p.Stats(); st.Idle != 3 || st.Starting != 0 {
		t.Fatalf("StartPool returned before every worker was ready: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, _, err := p.Do(ctx, pool.Request{Session: "s"}, &worker.Call{Command: "echo", Payload: json.RawMessage(`7`)})
	if err != nil || !res.OK || string(res.Value) != "7" {
		t.Fatalf("call: %+v %v", res, err)
	}
}

func TestStartFleet(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 2}
	cfg.Agent.Queue = queue.Config{Partitions: 4}
	cfg.Agent.Pool.Size = 1
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := f.Client.SubmitAndWait(ctx, "s1", &queue.Job{Command: "echo", Payload: json.RawMessage(`"x"`)})
	if err != nil || !res.OK {
		t.Fatalf("%+v %v", res, err)
	}
}
