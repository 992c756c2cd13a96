package dispatcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestUnroutableQueue: a queue nobody serves. A plain client cannot submit
// to a queue that does not exist (a clear error, nothing published); the
// dispatcher's submit endpoint creates it. Its jobs wait, listed by status
// with no agent and their age; a waiter is told no agent serves the queue;
// after --unroutable-after each ends as an unroutable result, under the id
// rule, plus a dead letter naming the queue.
func TestUnroutableQueue(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	// Long enough that the checks below run before the sweeper acts,
	// even on a loaded machine.
	const after = 8 * time.Second
	srv := startServe(t, nc, dispatcher.ServeConfig{UnroutableAfter: after})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := dispatcher.NewClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.SubmitTo(ctx, "gpu", "", &queue.Job{Command: "embed"}); !errors.Is(err, queue.ErrUnknownQueue) ||
		!strings.Contains(err.Error(), "dispatcher queue add gpu") {
		t.Fatalf("submit to a queue that does not exist: %v, want ErrUnknownQueue saying how to create it", err)
	}
	if _, _, err := c.SubmitTo(ctx, "any", "", &queue.Job{Command: "embed"}); !errors.Is(err, queue.ErrBadRequest) {
		t.Fatalf("submit to reserved queue name: %v", err)
	}

	// Through the dispatcher's API: the queue is created on demand.
	msg, err := nc.RequestWithContext(ctx, "fleet.api.submit", []byte(`{"queue":"gpu","job":{"id":"emb-1","command":"embed"}}`))
	if err != nil {
		t.Fatal(err)
	}
	var rep dispatcher.SubmitReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil || rep.ID != "emb-1" || rep.Queue != "gpu" {
		t.Fatalf("submit reply %s (%v)", msg.Data, err)
	}
	// So does the HTTP API's.
	if r := call(t, nil, "POST", srv.URL+"/v1/jobs", "", `{"queue":"web","job":{"id":"h1","command":"x"}}`); r.Status/100 != 2 || !strings.Contains(r.Body, `"queue":"web"`) {
		t.Fatalf("HTTP submit to queue web: %d %s", r.Status, r.Body)
	}
	if r := call(t, nil, "POST", srv.URL+"/v1/jobs", "", `{"queue":"a.b","job":{"command":"x"}}`); r.Status != 400 {
		t.Fatalf("HTTP submit to queue a.b: %d %s, want 400", r.Status, r.Body)
	}
	// Now a plain nats.go publish reaches it too; a session job without
	// any id is filed under seq-<N>.
	js, _ := jetstream.New(nc)
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: "fleet.job.gpu.s.u1", Data: []byte(`{"command":"embed"}`)})
	if err != nil {
		t.Fatal(err)
	}
	anonID := fmt.Sprintf("seq-%d", ack.Sequence)

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var gpu *dispatcher.QueueStatus
	for i := range st.Queues {
		if st.Queues[i].Name == "gpu" {
			gpu = &st.Queues[i]
		}
	}
	if gpu == nil || gpu.Waiting != 2 || len(gpu.Agents) != 0 || gpu.OldestWaiting.IsZero() || gpu.Stream != "FLEET_JOBS_gpu" {
		t.Fatalf("status of queue gpu: %+v (all: %+v)", gpu, st.Queues)
	}
	// The metrics have it too, per queue.
	reg := prometheus.NewRegistry()
	reg.MustRegister(c.Metrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gauges := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "queue" && l.GetValue() == "gpu" {
					gauges[mf.GetName()] = m.GetGauge().GetValue()
				}
			}
		}
	}
	if gauges["procfleet_queue_jobs"] != 2 || gauges["procfleet_queue_backlog_jobs"] != 2 || gauges["procfleet_queue_agents"] != 0 ||
		gauges["procfleet_queue_oldest_job_age_seconds"] <= 0 {
		t.Errorf("metrics of queue gpu: %v", gauges)
	}
	var table strings.Builder
	if err := st.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "no agent serves this queue") {
		t.Fatalf("status table does not say nobody serves gpu:\n%s", table.String())
	}

	var told atomic.Bool
	r, err := c.ResultOn(ctx, "gpu", "emb-1", 0, func(int) { told.Store(true) })
	if err != nil {
		t.Fatal(err)
	}
	if !told.Load() {
		t.Error("the waiter was not told that no agent serves gpu")
	}
	for _, want := range []struct {
		id      string
		session string
	}{{"emb-1", ""}, {anonID, "u1"}} {
		r, err = c.ResultOn(ctx, "gpu", want.id, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.OK || r.Error == nil || r.Error.Kind != queue.KindUnroutable || r.Queue != "gpu" || r.Session != want.session ||
			!strings.Contains(r.Error.Message, `no agent served queue "gpu"`) {
			t.Fatalf("result of %s: %+v %+v", want.id, r, r.Error)
		}
		if age := r.FinishedAt.Sub(r.EnqueuedAt); age < after {
			t.Errorf("job %s dead-lettered after %s, before --unroutable-after %s", want.id, age, after)
		}
	}
	dls, err := c.Topology().DeadLetters(ctx, 10)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	var letter uint64
	for _, d := range dls {
		if d.Kind == queue.KindUnroutable && d.Queue == "gpu" && strings.HasPrefix(d.Subject, "fleet.job.gpu.") {
			found++
			if d.JobID == "emb-1" {
				letter = d.Seq
			}
		}
	}
	if found != 2 || letter == 0 {
		t.Fatalf("want 2 unroutable dead letters of queue gpu, got %+v", dls)
	}
	// A replay sends the job back to its own queue, and deletes its
	// unroutable result so that a waiter gets the next one.
	if err := c.Topology().ReplayDeadLetter(ctx, letter); err != nil {
		t.Fatal(err)
	}
	gpuTopo, err := c.Queue(ctx, "gpu")
	if err != nil {
		t.Fatal(err)
	}
	// The sweeper stores the result before it deletes the job, so the
	// second job (whose result we saw) may still be in the stream for a
	// moment: wait for its delete, then the replayed job alone remains.
	fleettest.Eventually(t, 10*time.Second, func() error {
		si, err := gpuTopo.Jobs.Info(ctx)
		if err != nil {
			return err
		}
		if si.State.Msgs != 1 || si.State.LastSeq <= ack.Sequence {
			return fmt.Errorf("after replay, queue gpu holds %+v, want the replayed job alone", si.State)
		}
		return nil
	})
	if _, err := c.Topology().GetResult(ctx, "emb-1"); !errors.Is(err, queue.ErrResultNotFound) {
		t.Fatalf("the replayed job's unroutable result is still there: %v", err)
	}
	fleettest.Eventually(t, 3*after, func() error {
		qs, err := c.QueueStatuses(ctx)
		if err != nil {
			return err
		}
		for _, q := range qs {
			if q.Name == "gpu" && q.Waiting != 0 {
				return fmt.Errorf("gpu still holds %d jobs", q.Waiting)
			}
		}
		return nil
	})
}

// TestUnroutableSparesServedQueues: jobs that wait longer than
// --unroutable-after behind busy workers are not unroutable while an agent
// serves their queue.
func TestUnroutableSparesServedQueues(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	argv, env := fleettest.HelperWorker()
	var q agent.QueueConfig
	q.Name, q.Pool.Size, q.Capacity = "busy", 1, 4
	q.Pool.Worker.Command, q.Pool.Worker.Env = argv, env
	cfg.Agent.Queues = []agent.QueueConfig{q}
	cfg.Agent.Queue = queue.Config{Partitions: 4}
	f := fleettest.StartFleet(t, cfg)
	const after = time.Second
	startServe(t, f.NC, dispatcher.ServeConfig{Queue: queue.Config{Partitions: 4}, UnroutableAfter: after})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// One worker: the second job waits behind the first, well past after.
	var ids []string
	var seqs []uint64
	for range 2 {
		id, seq, err := f.Client.SubmitTo(ctx, "busy", "", &queue.Job{Command: "sleep", Payload: json.RawMessage(`{"MS":3000}`)})
		if err != nil {
			t.Fatal(err)
		}
		ids, seqs = append(ids, id), append(seqs, seq)
	}
	for i, id := range ids {
		r, err := f.Client.ResultOn(ctx, "busy", id, seqs[i], nil)
		if err != nil {
			t.Fatal(err)
		}
		if !r.OK {
			t.Fatalf("job %d of a served queue: %+v", i, r.Error)
		}
	}
}
