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

// TestUnroutableSweepYieldsToAConsumer: the sweep dead-letters a job only
// while nobody pulls from its consumer. An agent that starts serving the
// queue during a sweep (before the registry shows it) takes jobs the sweep
// has already looked at; a job it runs must not also end unroutable. Here
// a plain pull consumer plays that agent: while it holds the queue's two
// old jobs with a pull request still open, or took a job less than
// --unroutable-after ago, the sweep leaves them alone; once it has gone
// quiet for that long, they end unroutable as before.
func TestUnroutableSweepYieldsToAConsumer(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	// A pull request open for 3 x after; checks every after/5. The
	// margins (after/2 before the pull expires, deliveries 5 times as
	// often as needed) hold on a loaded 2-core machine.
	const after = 2 * time.Second
	startServe(t, nc, dispatcher.ServeConfig{UnroutableAfter: after})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := dispatcher.NewClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	submit := func(id string) {
		t.Helper()
		if _, err := nc.RequestWithContext(ctx, "fleet.api.submit", []byte(`{"queue":"gpu","job":{"id":"`+id+`","command":"embed"}}`)); err != nil {
			t.Fatal(err)
		}
	}
	submit("held-1")
	submit("held-2")
	gpu, err := c.Queue(ctx, "gpu")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := gpu.AnyConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.FetchNoWait(2)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for range batch.Messages() {
		held++
	}
	if held != 2 || batch.Error() != nil {
		t.Fatalf("took %d jobs (%v), want both", held, batch.Error())
	}
	// The "agent" keeps a pull request open, as agents do.
	const open = 3 * after
	pulling := time.Now()
	waiting, err := cons.Fetch(1, jetstream.FetchMaxWait(open))
	if err != nil {
		t.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range waiting.Messages() {
		}
	}()
	t.Cleanup(func() { <-drained })
	unroutable := func(id string) error {
		r, err := c.Topology().GetResult(ctx, id)
		if errors.Is(err, queue.ErrResultNotFound) {
			return fmt.Errorf("job %s has no result yet", id)
		}
		if err != nil {
			return err
		}
		if r.Error == nil || r.Error.Kind != queue.KindUnroutable {
			return fmt.Errorf("job %s: result %+v, want unroutable", id, r)
		}
		return nil
	}
	// Until after/2 before the pull expires, the jobs aged past
	// --unroutable-after almost all along.
	fleettest.Throughout(t, open-time.Since(pulling)-after/2, 100*time.Millisecond, func() error {
		for _, id := range []string{"held-1", "held-2"} {
			if unroutable(id) == nil {
				return fmt.Errorf("job %s dead-lettered while a consumer of its queue pulled", id)
			}
		}
		return nil
	})
	// The pull expires; --unroutable-after after the last delivery the
	// sweep goes on.
	<-drained
	fleettest.Eventually(t, 10*time.Second, func() error { return errors.Join(unroutable("held-1"), unroutable("held-2")) })

	// Deliveries less than --unroutable-after ago hold the sweep off
	// too, with no pull request open: an "agent" that takes one job at a
	// time takes all ten, although they wait far longer than that.
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprintf("taken-%d", i))
		submit(ids[i])
	}
	tick := time.NewTicker(after / 5)
	defer tick.Stop()
	for took := 0; took < len(ids); {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("took %d of %d jobs: %v", took, len(ids), ctx.Err())
		}
		batch, err := cons.FetchNoWait(1)
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			if err := m.DoubleAck(ctx); err != nil {
				t.Fatal(err)
			}
			took++
		}
		if err := batch.Error(); err != nil {
			t.Fatal(err)
		}
		for _, id := range ids[took:] {
			if unroutable(id) == nil {
				t.Fatalf("job %s dead-lettered while a consumer of its queue took a job every %v", id, after/5)
			}
		}
	}
	for _, id := range ids {
		if unroutable(id) == nil {
			t.Errorf("job %s, taken by the consumer, also ended unroutable", id)
		}
	}
}

// TestUnroutableSweepKeepsSchedules: a queue no agent serves loses its
// waiting jobs to the sweep, never its periodic schedules or its delayed
// jobs not yet due: the server fires those, no agent takes them.
func TestUnroutableSweepKeepsSchedules(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	qc := queue.Config{Schedules: true, Partitions: 2}
	startServe(t, nc, dispatcher.ServeConfig{UnroutableAfter: time.Second, Queue: qc})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := dispatcher.NewClient(ctx, nc, qc)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.AddSchedule(ctx, &queue.Schedule{Name: "hourly", Every: "1h", Job: &queue.Job{Command: "echo"}}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SubmitIn(ctx, "u1", &queue.Job{ID: "later", Command: "echo"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	// Stored after them: once the sweep has dead-lettered it, it has
	// passed them.
	if _, err := c.Submit(ctx, "u1", &queue.Job{ID: "waiting", Command: "echo"}); err != nil {
		t.Fatal(err)
	}
	res, err := c.Result(ctx, "waiting", nil)
	if err != nil || res.Error == nil || res.Error.Kind != queue.KindUnroutable {
		t.Fatalf("the waiting job: %+v (%v), want unroutable", res, err)
	}
	scheds, err := c.Schedules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	delayed, n, err := c.Delayed(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(scheds) != 1 || n != 1 || delayed[0].Name != "later" {
		t.Fatalf("after the sweep: schedules %+v, delayed %+v; want the hourly schedule and the delayed job", scheds, delayed)
	}
}
