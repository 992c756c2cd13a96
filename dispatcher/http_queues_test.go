package dispatcher_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestHTTPQueuesKeepJobsApart: a job's sequence counts in its own queue's
// stream, so two jobs of two queues may share an id and a sequence. A
// result asked for by id, sequence and queue is that job's, never the
// other's; a submit's duplicate is compared in its own queue's stream.
func TestHTTPQueuesKeepJobsApart(t *testing.T) {
	t.Parallel()
	cfg := fleettest.FleetConfig{Agents: 1}
	var defQ agent.QueueConfig
	defQ.Pool.Size = 1
	defQ.Pool.Worker.Command, defQ.Pool.Worker.Env = fleettest.HelperWorker()
	q2Q := defQ
	defQ.Name, q2Q.Name = queue.DefaultQueue, "q2"
	cfg.Agent.Queues = []agent.QueueConfig{defQ, q2Q}
	f := fleettest.StartFleet(t, cfg)
	s := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{})

	var def, q2 dispatcher.SubmitReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"id":"same","command":"echo","payload":"default's"}}`), 200, &def)
	var res queue.Result
	decode(t, call(t, nil, "GET", fmt.Sprintf("%s/v1/results/same?seq=%d&wait=30s", s.URL, def.Seq), "", ""), 200, &res)
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"queue":"q2","job":{"id":"same","command":"echo","payload":"q2's"}}`), 200, &q2)
	if q2.Queue != "q2" || q2.Seq != def.Seq {
		t.Fatalf("submits: default %+v, q2 %+v; want the same sequence in both fresh streams", def, q2)
	}
	for _, tc := range []struct{ query, want string }{
		{fmt.Sprintf("seq=%d&queue=q2&wait=30s", q2.Seq), `"q2's"`},
		{fmt.Sprintf("seq=%d&queue=q2", q2.Seq), `"q2's"`},
		{fmt.Sprintf("seq=%d", def.Seq), `"default's"`},
		{fmt.Sprintf("seq=%d&queue=default", def.Seq), `"default's"`},
	} {
		decode(t, call(t, nil, "GET", s.URL+"/v1/results/same?"+tc.query, "", ""), 200, &res)
		if !res.OK || string(res.Result) != tc.want {
			t.Errorf("?%s: %+v, want the job whose payload was %s", tc.query, res, tc.want)
		}
	}
	// The progress stream of a finished job sends its result alone.
	resp, err := http.Get(fmt.Sprintf("%s/v1/jobs/same/progress?seq=%d&queue=q2", s.URL, q2.Seq))
	if err != nil {
		t.Fatal(err)
	}
	var events strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		events.WriteString(sc.Text() + "\n")
	}
	resp.Body.Close()
	if !strings.Contains(events.String(), "event: result") || !strings.Contains(events.String(), `"result":"q2's"`) {
		t.Errorf("progress of q2's job: %s", events.String())
	}
	// Reading never makes a queue.
	if r := call(t, nil, "GET", s.URL+"/v1/results/same?seq=1&queue=nope", "", ""); r.Status != 404 || !strings.Contains(r.Body, "nope") {
		t.Errorf("result on an unknown queue: %d %s, want 404", r.Status, r.Body)
	}
	if _, err := f.Client.Topology().JS.Stream(context.Background(), queue.Config{Queue: "nope"}.JobsStream()); err == nil {
		t.Errorf("a result lookup created queue nope")
	}

	// A job waiting on a queue nobody serves is compared with its own
	// stream's message at the same sequence, not the default queue's.
	var idle dispatcher.SubmitReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"queue":"idle","job":{"id":"w1","command":"echo","payload":{"x":1}}}`), 200, &idle)
	if r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"queue":"idle","job":{"id":"w1","command":"echo","payload":{"x":2}}}`); r.Status != 409 {
		t.Errorf("another job under a waiting job's id on queue idle (seq %d): %d %s, want 409", idle.Seq, r.Status, r.Body)
	}
	var again dispatcher.SubmitReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"queue":"idle","job":{"id":"w1","command":"echo","payload":{"x":1}}}`), 200, &again)
	if !again.Duplicate || again.Seq != idle.Seq {
		t.Errorf("retry on queue idle: %+v, want a duplicate of seq %d", again, idle.Seq)
	}
}

// TestHTTPJobViewOfAReusedID: the job view shows one job. A dead letter
// and a result under one id that belong to two jobs (the id reused after
// the dedup window) are not mixed: the later job's outcome is shown.
func TestHTTPJobViewOfAReusedID(t *testing.T) {
	t.Parallel()
	s, topo, ctx := serveAndTopology(t)
	earlier := time.Now().Add(-time.Hour).UTC()
	store := func(r *queue.Result) {
		t.Helper()
		if err := topo.StoreResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// The first job under "mix" died an hour ago: exhausted result and dead letter.
	store(&queue.Result{ID: "mix", JobSeq: 10, FinishedAt: earlier, Error: &queue.ErrorInfo{Kind: queue.KindExhausted, Message: "x"}})
	if err := topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: "mix", Subject: "fleet.job.any", Job: []byte(`{"id":"mix","command":"old"}`),
		Kind: queue.KindExhausted, Error: "x", StreamSeq: 10, At: earlier}); err != nil {
		t.Fatal(err)
	}
	var v dispatcher.JobView
	decode(t, call(t, nil, "GET", s.URL+"/v1/jobs/mix", "", ""), 200, &v)
	if v.State != "dead" || v.DeadLetter == nil || v.Result == nil || v.Result.JobSeq != 10 {
		t.Fatalf("a dead job: %+v", v)
	}
	// The id again, a later job that ran well.
	store(&queue.Result{ID: "mix", JobSeq: 50, OK: true, Result: json.RawMessage(`"new"`), FinishedAt: time.Now().UTC()})
	v = dispatcher.JobView{}
	decode(t, call(t, nil, "GET", s.URL+"/v1/jobs/mix", "", ""), 200, &v)
	if v.State != "done" || v.DeadLetter != nil || v.Result == nil || v.Result.JobSeq != 50 || strings.Contains(string(v.Envelope), "old") {
		t.Fatalf("the later job's view: state %s, dead letter %+v, result %+v, envelope %s", v.State, v.DeadLetter, v.Result, v.Envelope)
	}
}

// TestSubmitQueueLimit: submits create queues on demand up to MaxQueues
// (the default queue counts); beyond, a submit to a new queue is a 409
// that says how to declare it, and nothing is made. A declared queue is
// not bounded, and existing queues still take jobs.
func TestSubmitQueueLimit(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{MaxQueues: 3, Queue: queue.Config{Partitions: 2}})
	submit := func(q string) reply {
		return call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"queue":"`+q+`","job":{"command":"echo"}}`)
	}
	for _, q := range []string{"a", "b", "a"} {
		if r := submit(q); r.Status != 200 {
			t.Fatalf("submit to %s: %d %s", q, r.Status, r.Body)
		}
	}
	if r := submit("A"); r.Status != 400 || !strings.Contains(r.Body, "did you mean a") {
		t.Fatalf("a queue differing from one only in case: %d %s, want 400 asking whether a was meant", r.Status, r.Body)
	}
	if r := submit("c"); r.Status != 409 || !strings.Contains(r.Body, "queue add") {
		t.Fatalf("a fourth queue: %d %s, want 409 saying how to declare it", r.Status, r.Body)
	}
	msg, err := nc.Request("fleet.api.submit", []byte(`{"queue":"c","job":{"command":"echo"}}`), 10*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "409" {
		t.Errorf("a fourth queue over NATS: %v %v, want code 409", msgData(msg), err)
	}
	c, names := queueNames(t, nc)
	if strings.Join(names, ",") != "default,a,b" {
		t.Fatalf("queues %v, want default,a,b", names)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.AddQueue(ctx, "c", queue.QueueLimits{}); err != nil {
		t.Fatalf("declaring a queue past the limit: %v", err)
	}
	if r := submit("c"); r.Status != 200 {
		t.Errorf("submit to the declared queue: %d %s", r.Status, r.Body)
	}
}

// TestHTTPDelayWithoutSchedules: a delayed job or a schedule sent to a
// dispatcher that runs without schedules is refused with 501 and the way to
// turn them on, not a 500.
func TestHTTPDelayWithoutSchedules(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	for path, body := range map[string]string{
		"/v1/jobs":      `{"in":"5s","job":{"command":"echo"}}`,
		"/v1/schedules": `{"name":"n","every":"1h","job":{"command":"echo"}}`,
	} {
		if r := call(t, nil, "POST", s.URL+path, "", body); r.Status != 501 || !strings.Contains(r.Body, "--schedules") {
			t.Errorf("POST %s without schedules: %d %s, want 501 saying how to turn them on", path, r.Status, r.Body)
		}
	}
}

// TestHTTPSubmitToAFullQueue: a full queue's refusal is a 503 (retry later)
// that says the queue is full and how to raise its limit, not that NATS is
// unavailable.
func TestHTTPSubmitToAFullQueue(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{Queue: queue.Config{Partitions: 2, Limits: queue.QueueLimits{MaxMsgs: 1}}})
	if r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"command":"echo"}}`); r.Status != 200 {
		t.Fatalf("first job: %d %s", r.Status, r.Body)
	}
	r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"command":"echo"}}`)
	if r.Status != 503 || r.Header.Get("Retry-After") == "" || !strings.Contains(r.Body, "holds at most 1 jobs") || strings.Contains(r.Body, "NATS is unavailable") {
		t.Fatalf("a job over the limit: %d %s, want 503 saying the queue is full", r.Status, r.Body)
	}
}

// TestSubmitQueueLimitUnderRace: submits racing to new queues cannot pass
// the limit together: the count and the creation are one step.
func TestSubmitQueueLimitUnderRace(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{MaxQueues: 3, Queue: queue.Config{Partitions: 2}})
	codes := make(chan int, 12)
	var wg sync.WaitGroup
	for i := range cap(codes) {
		wg.Go(func() {
			codes <- call(t, nil, "POST", s.URL+"/v1/jobs", "", fmt.Sprintf(`{"queue":"q%d","job":{"command":"echo"}}`, i)).Status
		})
	}
	wg.Wait()
	close(codes)
	made := 0
	for c := range codes {
		if c == 200 {
			made++
		} else if c != 409 {
			t.Errorf("a submit to a new queue: %d, want 200 or 409", c)
		}
	}
	_, names := queueNames(t, nc)
	if made != 2 || len(names) != 3 {
		t.Fatalf("%d submits made a queue, %d queues exist (%v); want 2 and 3 (the default queue counts)", made, len(names), names)
	}
}

// queueNames lists the queues on nc's server, through a client of its own.
func queueNames(t *testing.T, nc *nats.Conn) (*dispatcher.Client, []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatcher.NewClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	names, err := queue.ListQueues(ctx, c.Topology().JS, c.Topology().Config)
	if err != nil {
		t.Fatal(err)
	}
	return c, names
}

// TestHTTPCancelDelayedJob: a delayed job canceled before it is due ends
// then, "canceled", and never fires: a cancel record covers a fired job
// only within the dedup window of the cancel, which a job due later would
// outlive. That outcome answers the seq its submit got back, and not a
// later job's that reuses the id.
func TestHTTPCancelDelayedJob(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{Queue: queue.Config{Schedules: true, Partitions: 2}})
	var sub dispatcher.SubmitReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"session":"u1","in":"1h","job":{"id":"d-cancel","command":"echo"}}`), 200, &sub)
	var reply dispatcher.CancelReply
	decode(t, call(t, nil, "DELETE", s.URL+"/v1/jobs/d-cancel", "", ""), 202, &reply)
	if reply.Finished {
		t.Fatalf("cancel of a delayed job: %+v", reply)
	}
	var res queue.Result
	decode(t, call(t, nil, "GET", s.URL+"/v1/results/d-cancel", "", ""), 200, &res)
	if res.OK || res.Error == nil || res.Error.Kind != queue.KindCanceled || res.Session != "u1" {
		t.Fatalf("the delayed job's outcome: %+v (%+v), want canceled", res, res.Error)
	}
	r := call(t, nil, "GET", s.URL+"/v1/schedules", "", "")
	if r.Status != 200 || strings.Contains(r.Body, "d-cancel") {
		t.Fatalf("schedules after the cancel: %d %s; want the delayed job gone", r.Status, r.Body)
	}
	// The outcome is that job's: a later job that reuses the id (published
	// here without Nats-Msg-Id, as after the jobs dedup window; no agent
	// runs it) is not answered with it, and the seq the delayed submit got
	// back is.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	later, err := js.Publish(t.Context(), "fleet.job.any", []byte(`{"id":"d-cancel","command":"echo"}`))
	if err != nil {
		t.Fatal(err)
	}
	if r := call(t, nil, "GET", fmt.Sprintf("%s/v1/results/d-cancel?seq=%d", s.URL, later.Sequence), "", ""); r.Status != 404 {
		t.Fatalf("?seq=%d (a later job under the id, still waiting): %d %s, want 404", later.Sequence, r.Status, r.Body)
	}
	res = queue.Result{}
	decode(t, call(t, nil, "GET", fmt.Sprintf("%s/v1/results/d-cancel?seq=%d&wait=10s", s.URL, sub.Seq), "", ""), 200, &res)
	if res.Error == nil || res.Error.Kind != queue.KindCanceled || res.JobSeq != sub.Seq {
		t.Fatalf("?seq=%d (the delayed submit's): %+v, want its canceled result", sub.Seq, res)
	}
}
