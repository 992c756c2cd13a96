package agent_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
)

// TestOneAgentTwoQueues: one agent, one connection, two pools: the default
// queue (old subjects, as old clients publish) and queue gpu. Each job runs
// on its queue's pool; session u1 of one queue and u1 of the other are two
// sessions, each bound to its own worker; results carry the queue; the
// registry entry, the micro service stats and Queues() list both.
func TestOneAgentTwoQueues(t *testing.T) {
	t.Parallel()
	cfg := fleetConfig(1, 0)
	argv, env := fleettest.HelperWorker()
	pool := cfg.Agent.Pool
	pool.Size = 2
	pool.Worker.Command, pool.Worker.Env = argv, env
	cfg.Agent.Queues = []agent.QueueConfig{{Name: "default", Pool: pool}, {Name: "gpu", Pool: pool, Capacity: 3}}
	f := fleettest.StartFleet(t, cfg)
	a := f.Agents[0]
	if got := a.Queues(); !slices.Equal(got, []string{"default", "gpu"}) {
		t.Fatalf("Queues() = %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	js, _ := jetstream.New(f.NC)
	pub := func(subject, id string) {
		t.Helper()
		msg := &nats.Msg{Subject: subject, Data: fmt.Appendf(nil, `{"id":%q,"command":"session"}`, id)}
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s on %s: %v", id, subject, err)
		}
	}
	var ids []string
	for i := range 4 {
		for _, s := range []struct{ subject, prefix string }{
			{"fleet.job.s.u1", "d"}, {"fleet.job.gpu.s.u1", "g"}, {"fleet.job.any", "da"}, {"fleet.job.gpu.any", "ga"},
		} {
			id := fmt.Sprintf("%s-%d", s.prefix, i)
			pub(s.subject, id)
			ids = append(ids, id)
		}
	}
	gpuPool := a.QueuePool("gpu")
	defPool := a.QueuePool("default")
	if gpuPool == nil || defPool == nil || gpuPool == defPool {
		t.Fatal("want two pools")
	}
	bound := map[string]string{} // queue -> worker of session u1
	for _, id := range ids {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		r, err := f.Client.ResultOn(wctx, "", id, 0, nil)
		wcancel()
		if err != nil {
			if st, serr := f.Client.Status(ctx); serr == nil {
				var b strings.Builder
				_ = st.WriteTable(&b)
				t.Logf("status:\n%s", b.String())
			}
			t.Fatal(err)
		}
		if !r.OK {
			t.Fatalf("job %s: %+v", id, r.Error)
		}
		want := "default"
		if id[0] == 'g' {
			want = "gpu"
		}
		if r.Queue != want {
			t.Errorf("job %s: queue %q, want %q", id, r.Queue, want)
		}
		if owner := ownerPool(a, r.WorkerPID); owner != want {
			t.Errorf("job %s of queue %s ran on worker %s (pid %d) of pool %q", id, want, r.Worker, r.WorkerPID, owner)
		}
		if r.Session == "u1" {
			rep := decode[sessionReply](t, r.Result)
			if w, ok := bound[want]; ok && w != r.Worker {
				t.Errorf("session u1 of %s moved from %s to %s", want, w, r.Worker)
			}
			bound[want] = r.Worker
			if (id == "d-0" || id == "g-0") != rep.NewSession {
				t.Errorf("job %s: new_session %v (the two queues' u1 are separate sessions)", id, rep.NewSession)
			}
		}
	}
	info := a.Info()
	if len(info.Queues) != 2 || info.Queues[1].Queue != "gpu" || info.Queues[1].Capacity != 3 || !info.Agent.Serves("gpu") || !info.Agent.Serves("default") || info.Agent.Serves("other") {
		t.Fatalf("info: %+v", info)
	}
	agents, err := f.Topology().ListAgents(ctx)
	if err != nil || len(agents) != 1 || len(agents[0].Queues) != 2 {
		t.Fatalf("registry: %+v, %v", agents, err)
	}
	// The fleet waited for the first queue's partitions only.
	fleettest.Eventually(t, 30*time.Second, func() error {
		if got := a.QueuePartitions("gpu"); len(got) != 16 {
			return fmt.Errorf("gpu partitions held: %v", got)
		}
		return nil
	})
}

// ownerPool names the queue whose pool runs the worker with pid.
func ownerPool(a *agent.Agent, pid int) string {
	for _, q := range a.Queues() {
		for _, w := range a.QueuePool(q).Stats().Workers {
			if w.PID == pid {
				return q
			}
		}
	}
	return ""
}
