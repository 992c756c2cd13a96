package dispatcher_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestHTTPRoutesNeedRights: every route but /healthz answers 401 without a
// token and 403 to a token without its right.
func TestHTTPRoutesNeedRights(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPTokens: testTokens()})
	rightOf := map[string]string{
		"GET /v1/openapi.yaml": "", "POST /v1/jobs": tokSubmit, "POST /v1/jobs/batch": tokSubmit,
		"GET /v1/jobs/{id}/progress": tokRead, "GET /v1/results/{id}": tokRead, "GET /v1/status": tokRead,
		"GET /v1/agents": tokRead, "GET /v1/queues": tokRead, "GET /v1/dlq": tokAdmin, "DELETE /v1/dlq": tokAdmin,
		"GET /v1/dlq/{seq}": tokAdmin, "POST /v1/dlq/{seq}/replay": tokAdmin, "POST /v1/dlq/replay": tokAdmin,
		"POST /ui/login": tokRead, "GET /v1/events": tokRead, "GET /v1/jobs/{id}": tokRead, "GET /v1/failures": tokRead,
		"POST /v1/schedules": tokSubmit, "GET /v1/schedules": tokRead, "DELETE /v1/schedules/{name}": tokSubmit,
		"DELETE /v1/jobs/{id}": tokSubmit,
	}
	// Routes not behind a bearer token: open ones, and pages that
	// authenticate otherwise (their own tests pin that).
	notBearer := map[string]bool{"GET /healthz": true, "GET /{$}": true, "GET /ui/{file}": true, "POST /ui/logout": true}
	for _, route := range dispatcher.HTTPRoutes() {
		if notBearer[route] {
			continue
		}
		method, path, _ := strings.Cut(route, " ")
		path = strings.NewReplacer("{id}", "j1", "{seq}", "1", "{$}", "").Replace(path)
		right, ok := rightOf[route]
		if !ok {
			t.Errorf("%s: no right listed in this test", route)
			continue
		}
		if code := statusOnly(t, method, s.URL+path, ""); code != 401 {
			t.Errorf("%s without a token: %d, want 401", route, code)
		}
		for _, tok := range []string{tokSubmit, tokRead, tokAdmin} {
			code := statusOnly(t, method, s.URL+path, tok)
			refused := code == 401 || code == 403
			if want := right != "" && tok != right; refused != want {
				t.Errorf("%s with token %s: %d (refused=%v, want %v)", route, tok, code, refused, want)
			}
		}
	}
	r := call(t, nil, "GET", s.URL+"/v1/openapi.yaml", tokSubmit, "")
	if r.Status != 200 || !strings.HasPrefix(r.Body, "openapi: 3.1") || r.Header.Get("Content-Type") != "application/yaml" {
		t.Errorf("openapi.yaml: %d %q %.40s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
}

// TestHTTPSubmitSeqAndConflict: submit answers the job's stream sequence;
// the same job again is a duplicate with the first sequence; another job
// under a waiting job's id is 409, over HTTP and NATS alike, and is not
// stored.
func TestHTTPSubmitSeqAndConflict(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{}) // no agent: jobs wait
	var first, again dispatcher.SubmitReply
	job := `{"session":"s1","job":{"id":"c-1","command":"echo","payload":{"a":1,"b":2}}}`
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", job), 200, &first)
	if first.Seq == 0 || first.ID != "c-1" || first.Duplicate {
		t.Fatalf("first submit: %+v", first)
	}
	// The same job, keys in another order and spaced: a retry.
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"payload":{"b":2, "a":1},"command":"echo","id":"c-1"},"session":"s1"}`), 200, &again)
	if !again.Duplicate || again.Seq != first.Seq {
		t.Fatalf("retry: %+v, want duplicate of seq %d", again, first.Seq)
	}
	for name, body := range map[string]string{
		"another payload": `{"session":"s1","job":{"id":"c-1","command":"echo","payload":{"a":2}}}`,
		"another session": `{"session":"s2","job":{"id":"c-1","command":"echo","payload":{"a":1,"b":2}}}`,
		"another command": `{"session":"s1","job":{"id":"c-1","command":"other","payload":{"a":1,"b":2}}}`,
	} {
		r := call(t, nil, "POST", s.URL+"/v1/jobs", "", body)
		if r.Status != 409 || !strings.Contains(r.Body, "c-1") {
			t.Errorf("%s under a waiting job's id: %d %s, want 409", name, r.Status, r.Body)
		}
		msg, err := s.NC.Request("fleet.api.submit", []byte(body), 10*time.Second)
		if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "409" {
			t.Errorf("%s over NATS: %v %v, want code 409", name, msg, err)
		}
	}
	// In a batch, jobs under one id go in their order: the first is
	// stored, the same job again is its duplicate, another is a conflict.
	items := make([]string, 40)
	for i := range items {
		items[i] = fmt.Sprintf(`{"job":{"id":"o-1","command":"echo","payload":%d}}`, i%2)
	}
	var br dispatcher.BatchReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs/batch", "", `{"jobs":[`+strings.Join(items, ",")+`]}`), 200, &br)
	for i, it := range br.Items {
		want := map[bool]int{true: 200, false: 409}[i%2 == 0]
		if it.Status != want || (i > 0 && want == 200 && (!it.Duplicate || it.Seq != br.Items[0].Seq)) {
			t.Fatalf("batch item %d under one id: %+v, want %d (a duplicate of item 0 when 200)", i, it, want)
		}
	}
	var st dispatcher.Status
	decode(t, call(t, nil, "GET", s.URL+"/v1/status", "", ""), 200, &st)
	if st.Pending != 2 {
		t.Fatalf("jobs stream holds %d jobs, want 2", st.Pending)
	}
}

func decode(t *testing.T, r reply, status int, v any) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Body)
	}
	if err := json.Unmarshal([]byte(r.Body), v); err != nil {
		t.Fatalf("%v: %s", err, r.Body)
	}
}

// TestHTTPBatch: every job of a batch gets its own outcome; the bad ones
// are not published, the good ones are and run.
func TestHTTPBatch(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleettest.FleetConfig{})
	s := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{})
	max := int(s.NC.MaxPayload())
	items := []string{
		`{"session":"b1","job":{"id":"b-0","command":"echo","payload":0}}`,
		`{"session":"b.1","job":{"id":"b-1","command":"echo"}}`, // bad session
		`{"job":{"id":"b-2","command":"echo","payload":2}}`,     // anonymous
		`{"sesion":"b1","job":{"id":"b-3","command":"echo"}}`,   // misspelt field
		`{"job":{"id":"b-4","command":"echo","payload":"` + strings.Repeat("x", max) + `"}}`,
		`{"session":"b1","job":{"id":"b-0","command":"echo","payload":0}}`, // duplicate of item 0
		`{"job":{"id":"b-6"}}`, // no command
	}
	body := `{"jobs":[` + strings.Join(items, ",") + `]}`
	var br dispatcher.BatchReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs/batch", "", body), 200, &br)
	wantStatus := []int{200, 400, 200, 400, 413, 200, 400}
	if len(br.Items) != len(items) || br.Accepted != 3 || br.Failed != 4 {
		t.Fatalf("batch: %+v", br)
	}
	for i, it := range br.Items {
		if it.Index != i || it.Status != wantStatus[i] {
			t.Errorf("item %d: %+v, want status %d", i, it, wantStatus[i])
		}
		if it.Status != 200 && it.Error == "" {
			t.Errorf("item %d failed without a word", i)
		}
	}
	if !br.Items[5].Duplicate || br.Items[5].Seq != br.Items[0].Seq || br.Items[0].Seq == 0 {
		t.Errorf("duplicate in a batch: %+v vs %+v", br.Items[5], br.Items[0])
	}
	for _, id := range []string{"b-0", "b-2"} {
		r := call(t, nil, "GET", s.URL+"/v1/results/"+id+"?wait=30s", "", "")
		if r.Status != 200 {
			t.Errorf("result of %s: %d %s", id, r.Status, r.Body)
		}
	}
	for _, id := range []string{"b-1", "b-3", "b-4", "b-6"} {
		if r := call(t, nil, "GET", s.URL+"/v1/results/"+id, "", ""); r.Status != 404 {
			t.Errorf("refused item %s has a result: %d %s", id, r.Status, r.Body)
		}
	}
	many := make([]string, 1001)
	for i := range many {
		many[i] = `{"job":{"command":"echo"}}`
	}
	for name, tc := range map[string]struct {
		body   string
		status int
	}{
		"empty":       {`{"jobs":[]}`, 400},
		"not a batch": {`[{"job":{"command":"echo"}}]`, 400},
		"unknown key": {`{"jobs":[],"x":1}`, 400},
		"too many":    {`{"jobs":[` + strings.Join(many, ",") + `]}`, 400},
	} {
		if r := call(t, nil, "POST", s.URL+"/v1/jobs/batch", "", tc.body); r.Status != tc.status {
			t.Errorf("%s: %d %s, want %d", name, r.Status, r.Body, tc.status)
		}
	}
}

// TestHTTPResultLongPoll: ?wait= answers as soon as the result is stored,
// 404 once the wait has passed, and ends with the request; ?seq= picks the
// job.
func TestHTTPResultLongPoll(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleettest.FleetConfig{})
	s := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{})
	var sub dispatcher.SubmitReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"id":"lp-1","command":"sleep","payload":{"ms":500}}}`), 200, &sub)
	var res queue.Result
	decode(t, call(t, nil, "GET", s.URL+"/v1/results/lp-1?wait=30s", "", ""), 200, &res)
	if !res.OK || res.JobSeq != sub.Seq {
		t.Fatalf("long poll: %+v", res)
	}
	if r := call(t, nil, "GET", fmt.Sprintf("%s/v1/results/lp-1?seq=%d", s.URL, sub.Seq), "", ""); r.Status != 200 {
		t.Errorf("result at its seq: %d %s", r.Status, r.Body)
	}
	if r := call(t, nil, "GET", fmt.Sprintf("%s/v1/results/lp-1?seq=%d", s.URL, sub.Seq+100), "", ""); r.Status != 404 {
		t.Errorf("result at another seq: %d %s, want 404", r.Status, r.Body)
	}
	start := time.Now()
	r := call(t, nil, "GET", s.URL+"/v1/results/never?wait=1s", "", "")
	if r.Status != 404 || time.Since(start) < time.Second || !strings.Contains(r.Body, "within 1s") {
		t.Errorf("long poll for nothing: %d %s after %s, want 404 after 1s", r.Status, r.Body, time.Since(start))
	}
	for _, q := range []string{"wait=61s", "wait=-1s", "wait=soon", "seq=0", "seq=x"} {
		if r := call(t, nil, "GET", s.URL+"/v1/results/lp-1?"+q, "", ""); r.Status != 400 {
			t.Errorf("?%s: %d %s, want 400", q, r.Status, r.Body)
		}
	}

	// A client that goes away ends its long poll: the subscription the
	// wait holds on the dispatcher's connection goes with it.
	base := s.NC.NumSubscriptions()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", s.URL+"/v1/results/never-2?wait=60s", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := s.NC.NumSubscriptions(); n <= base {
			return fmt.Errorf("long poll not subscribed yet (%d subscriptions)", n)
		}
		return nil
	})
	cancel()
	<-done
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := s.NC.NumSubscriptions(); n > base {
			return fmt.Errorf("%d subscriptions after the client left, want %d", n, base)
		}
		return nil
	})
}

type sseEvent struct{ name, data string }

// readEvents reads server-sent events until the stream ends, sending each
// on the channel; comments are sent with name ":".
func readEvents(resp *http.Response, out chan<- sseEvent) {
	defer close(out)
	sc := bufio.NewScanner(resp.Body)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.name != "" {
				out <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			out <- sseEvent{name: ":", data: strings.TrimSpace(line[1:])}
		case strings.HasPrefix(line, "event: "):
			ev.name = line[len("event: "):]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[len("data: "):]
		}
	}
}

func next(t *testing.T, ch <-chan sseEvent) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("event stream ended")
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatal("no event within 30s")
	}
	return sseEvent{}
}

// TestHTTPProgressSSE: a progress stream says when it is live, forwards the
// worker's reports, ends with the stored result, and lets go of its
// subscriptions when the client leaves.
func TestHTTPProgressSSE(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleettest.FleetConfig{})
	s := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{})
	open := func(ctx context.Context, id string) (*http.Response, chan sseEvent) {
		resp := get(t, ctx, s.URL+"/v1/jobs/"+id+"/progress")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("progress: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		ch := make(chan sseEvent, 16)
		go readEvents(resp, ch)
		return resp, ch
	}
	resp, ch := open(context.Background(), "sse-1")
	defer resp.Body.Close()
	if ev := next(t, ch); ev != (sseEvent{":", "subscribed"}) {
		t.Fatalf("first event %+v, want the subscribed comment", ev)
	}
	if r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"id":"sse-1","command":"sleep","payload":{"ms":400}}}`); r.Status != 200 {
		t.Fatal(r.Body)
	}
	if ev := next(t, ch); ev != (sseEvent{"progress", `{"pct":50}`}) {
		t.Fatalf("event %+v, want the progress report", ev)
	}
	ev := next(t, ch)
	var res queue.Result
	if ev.name != "result" || json.Unmarshal([]byte(ev.data), &res) != nil || res.ID != "sse-1" || !res.OK {
		t.Fatalf("event %+v, want the result", ev)
	}
	if _, ok := <-ch; ok {
		t.Fatal("the stream goes on after the result")
	}

	// A finished job: the result at once, then the end.
	_, ch = open(context.Background(), "sse-1")
	if ev := next(t, ch); ev.name != "result" {
		t.Fatalf("finished job's stream: %+v", ev)
	}
	if _, ok := <-ch; ok {
		t.Fatal("a finished job's stream goes on")
	}

	// A client that leaves a stream of a job that never comes.
	base := s.NC.NumSubscriptions()
	ctx, cancel := context.WithCancel(context.Background())
	resp2, ch := open(ctx, "sse-never")
	defer resp2.Body.Close()
	next(t, ch)
	if n := s.NC.NumSubscriptions(); n != base+2 {
		t.Fatalf("%d subscriptions while streaming, want %d", n, base+2)
	}
	cancel()
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := s.NC.NumSubscriptions(); n != base {
			return fmt.Errorf("%d subscriptions after the client left, want %d", n, base)
		}
		return nil
	})
	if r := call(t, nil, "GET", s.URL+"/v1/jobs/a.b/progress", "", ""); r.Status != 400 {
		t.Errorf("bad id: %d %s", r.Status, r.Body)
	}
}

// TestHTTPFleetViews: agents and queues, with jobs waiting and without
// agents, then with agents.
func TestHTTPFleetViews(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	s := startServe(t, srv.Connect(t), dispatcher.ServeConfig{})
	var ar dispatcher.AgentsReply
	decode(t, call(t, nil, "GET", s.URL+"/v1/agents", "", ""), 200, &ar)
	if ar.Agents == nil || len(ar.Agents) != 0 {
		t.Fatalf("agents of an empty fleet: %+v", ar)
	}
	for i := range 3 {
		body := fmt.Sprintf(`{"session":"q%d","job":{"command":"echo"}}`, i)
		if r := call(t, nil, "POST", s.URL+"/v1/jobs", "", body); r.Status != 200 {
			t.Fatal(r.Body)
		}
	}
	if r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"command":"echo"}}`); r.Status != 200 {
		t.Fatal(r.Body)
	}
	var qr dispatcher.QueuesReply
	decode(t, call(t, nil, "GET", s.URL+"/v1/queues", "", ""), 200, &qr)
	if len(qr.Queues) != 1 {
		t.Fatalf("queues: %+v", qr)
	}
	q := qr.Queues[0]
	if q.Name != "default" || q.Pending != 4 || q.Waiting != 4 || q.Agents != 0 || q.Unassigned != queue.DefaultPartitions || q.Oldest == nil {
		t.Fatalf("default queue with 4 jobs and no agent: %+v", q)
	}

	fleettest.StartFleet(t, fleettest.FleetConfig{Server: srv, Agents: 2})
	fleettest.Eventually(t, 30*time.Second, func() error {
		var qr dispatcher.QueuesReply
		decode(t, call(t, nil, "GET", s.URL+"/v1/queues", "", ""), 200, &qr)
		if q := qr.Queues[0]; q.Waiting != 0 || q.Agents != 2 || q.Oldest != nil {
			return fmt.Errorf("queue %+v, want drained by 2 agents", q)
		}
		return nil
	})
	decode(t, call(t, nil, "GET", s.URL+"/v1/agents", "", ""), 200, &ar)
	if len(ar.Agents) != 2 || ar.Agents[0].Name != "agent-1" {
		t.Fatalf("agents: %+v", ar)
	}
}

// TestHTTPDeadLetters: get one, replay many with an outcome each (409 for a
// letter without its job), purge through a sequence, then all.
func TestHTTPDeadLetters(t *testing.T) {
	t.Parallel()
	s, topo, ctx := serveAndTopology(t)
	for i := 1; i <= 5; i++ {
		d := &queue.DeadLetter{JobID: fmt.Sprintf("d-%d", i), Subject: "fleet.job.any", Job: json.RawMessage(fmt.Sprintf(`{"id":"d-%d","command":"echo"}`, i)),
			Kind: queue.KindExhausted, Error: "test", StreamSeq: uint64(100 + i)}
		if i == 3 {
			d.Job, d.Omitted = nil, "job body of 9 bytes (test)"
		}
		if err := topo.WriteDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	var e queue.DeadLetterEntry
	decode(t, call(t, nil, "GET", s.URL+"/v1/dlq/2", "", ""), 200, &e)
	if e.Seq != 2 || e.JobID != "d-2" || e.Kind != queue.KindExhausted {
		t.Fatalf("dead letter 2: %+v", e)
	}
	for path, want := range map[string]int{"/v1/dlq/99": 404, "/v1/dlq/0": 400, "/v1/dlq/x": 400} {
		if r := call(t, nil, "GET", s.URL+path, "", ""); r.Status != want {
			t.Errorf("GET %s: %d %s, want %d", path, r.Status, r.Body, want)
		}
	}
	if r := call(t, nil, "POST", s.URL+"/v1/dlq/3/replay", "", ""); r.Status != 409 || !strings.Contains(r.Body, "omitted") {
		t.Errorf("replay of a letter without its job: %d %s, want 409", r.Status, r.Body)
	}
	var rr dispatcher.ReplayManyReply
	decode(t, call(t, nil, "POST", s.URL+"/v1/dlq/replay", "", `{"seqs":[1,2,3,99,0]}`), 200, &rr)
	want := []int{200, 200, 409, 404, 400}
	if rr.Replayed != 2 || rr.Failed != 3 || len(rr.Items) != 5 {
		t.Fatalf("replay many: %+v", rr)
	}
	for i, it := range rr.Items {
		if it.Status != want[i] {
			t.Errorf("replay item %d: %+v, want %d", i, it, want[i])
		}
	}
	var st dispatcher.Status
	decode(t, call(t, nil, "GET", s.URL+"/v1/status", "", ""), 200, &st)
	if st.Pending != 2 || st.DeadLetters != 3 {
		t.Fatalf("after replaying 2: %d jobs, %d letters; want 2 and 3", st.Pending, st.DeadLetters)
	}
	for _, body := range []string{`{"seqs":[]}`, `{"seq":[1]}`, `[1]`} {
		if r := call(t, nil, "POST", s.URL+"/v1/dlq/replay", "", body); r.Status != 400 {
			t.Errorf("replay many %s: %d, want 400", body, r.Status)
		}
	}
	// Purge through 4 leaves 5, then purge the rest.
	var pr dispatcher.PurgeReply
	decode(t, call(t, nil, "DELETE", s.URL+"/v1/dlq?through=4", "", ""), 200, &pr)
	if pr.Purged != 2 || pr.Through != 4 {
		t.Fatalf("purge through 4: %+v, want 2 purged (3 and 4)", pr)
	}
	var left []queue.DeadLetterEntry
	decode(t, call(t, nil, "GET", s.URL+"/v1/dlq", "", ""), 200, &left)
	if len(left) != 1 || left[0].Seq != 5 {
		t.Fatalf("left after purge: %+v", left)
	}
	decode(t, call(t, nil, "DELETE", s.URL+"/v1/dlq", "", ""), 200, &pr)
	if pr.Purged != 1 {
		t.Fatalf("purge all: %+v", pr)
	}
	if r := call(t, nil, "DELETE", s.URL+"/v1/dlq?through=x", "", ""); r.Status != 400 {
		t.Errorf("purge through=x: %d", r.Status)
	}
	// A purge through a sequence past the last stops at the last: the
	// dead letters that come later stay listed.
	decode(t, call(t, nil, "DELETE", s.URL+"/v1/dlq?through=18446744073709551614", "", ""), 200, &pr)
	if pr.Purged != 0 || pr.Through != 5 {
		t.Fatalf("purge past the last: %+v, want 0 purged through 5", pr)
	}
	if err := topo.WriteDeadLetter(ctx, &queue.DeadLetter{JobID: "d-6", Subject: "fleet.job.any", Job: json.RawMessage(`{"id":"d-6","command":"echo"}`),
		Kind: queue.KindExhausted, Error: "test", StreamSeq: 106}); err != nil {
		t.Fatal(err)
	}
	decode(t, call(t, nil, "GET", s.URL+"/v1/dlq", "", ""), 200, &left)
	if len(left) != 1 || left[0].Seq != 6 || left[0].JobID != "d-6" {
		t.Fatalf("a dead letter after a purge past the last: %+v", left)
	}
}

// TestHTTPProgressHeartbeat: an idle progress stream sends heartbeat
// comments at the configured interval.
func TestHTTPProgressHeartbeat(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPHeartbeat: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	resp := get(t, ctx, s.URL+"/v1/jobs/hb-1/progress")
	defer resp.Body.Close()
	ch := make(chan sseEvent, 16)
	go readEvents(resp, ch)
	for i, want := range []sseEvent{{":", "subscribed"}, {":", "heartbeat"}, {":", "heartbeat"}} {
		if ev := next(t, ch); ev != want {
			t.Fatalf("event %d: %+v, want %+v", i, ev, want)
		}
	}
	cancel()
	for range ch { // the reader ends with the request
	}
}

// TestHTTPShutdownEndsStreams: stopping Serve ends open event streams and
// long polls (they never go idle by themselves), and Serve returns.
func TestHTTPShutdownEndsStreams(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	base := make(chan string, 1)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- dispatcher.Serve(ctx, nc, dispatcher.ServeConfig{HTTPAddr: "127.0.0.1:0",
			HTTPListening: func(u string) { base <- u }, Ready: func() { close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	}
	url := <-base
	resp, err := http.Get(url + "/v1/jobs/never/progress")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	events := make(chan sseEvent, 16)
	go readEvents(resp, events)
	next(t, events) // subscribed
	subs := nc.NumSubscriptions()
	poll := make(chan reply, 1)
	go func() {
		resp, err := http.Get(url + "/v1/results/never?wait=60s")
		if err != nil {
			poll <- reply{Status: -1, Body: err.Error()}
			return
		}
		defer resp.Body.Close()
		poll <- reply{Status: resp.StatusCode}
	}()
	fleettest.Eventually(t, 10*time.Second, func() error {
		if n := nc.NumSubscriptions(); n <= subs { // the poll subscribes to its result
			return fmt.Errorf("long poll not subscribed yet (%d subscriptions)", n)
		}
		return nil
	})
	// Serve gives open connections 5s to go idle; streams that end with
	// the shutdown let it return long before.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("Serve did not return within 4s of its end: open streams held it")
	}
	drained := time.After(30 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-events:
		case <-drained:
			t.Fatal("the event stream is still open 30s after Serve ended")
		}
	}
	if r := <-poll; r.Status != 503 {
		t.Errorf("long poll at shutdown: %+v, want 503", r)
	}
}

// statusOnly answers the status of a request without reading its body, so
// that an event stream that would go on does not hold the test.
func statusOnly(t *testing.T, method, url, token string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
