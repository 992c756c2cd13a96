package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// startAgent runs one agent as the agent user until the test ends.
func startAgent(t *testing.T, s *securedServer, name string, qcfg queue.Config) *userConn {
	t.Helper()
	ac := s.connect(t, userAgent)
	cfg := agent.Config{Name: name, Queue: qcfg}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
	a, err := agent.New(ac.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(testCtx(t)); err != nil {
		t.Fatalf("agent as the agent user: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(testCtx(t)); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return ac
}

// tap records what a subscription receives.
type tap struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

func (tp *tap) subscribe(t *testing.T, uc *userConn, subject string) {
	t.Helper()
	if _, err := uc.Subscribe(subject, func(m *nats.Msg) {
		tp.mu.Lock()
		tp.msgs = append(tp.msgs, m)
		tp.mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
}

// count returns how many messages arrived, and how many of them on
// subjects starting with prefix carried marker.
func (tp *tap) count(marker string) (all, marked int) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, m := range tp.msgs {
		if strings.Contains(string(m.Data), marker) {
			marked++
		}
	}
	return len(tp.msgs), marked
}

// TestInboxesConfined: under deploy/nats-server.conf a client cannot read
// the jobs on their way to agents (they travel on the agents' inboxes), nor
// any other role's replies. Everything a client may subscribe to stays free
// of another job's payload while jobs flow; the agents' inbox, where the
// payload does travel, is refused to it.
func TestInboxesConfined(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	qcfg := queue.Config{Partitions: 8}
	s.ensureTopology(t, qcfg)
	startAgent(t, s, "inbox-1", qcfg)
	const marker = "payload-secret-8d1e"

	// A client snooping with every subscription it might try.
	snooper := s.connect(t, userClient)
	for _, subj := range []string{"_INBOX.>", "_INBOX_agent.>", "_INBOX_dispatcher.>", ">", "*.>", "fleet.job.>"} {
		snooper.denySubscribe(t, subj)
	}
	var seen tap
	for _, subj := range []string{inboxPrefix(userClient) + ".>", "fleet.result.>", "fleet.progress.>"} {
		seen.subscribe(t, snooper, subj)
	}
	// The agent role's inbox, where pulled jobs arrive: the control that
	// shows the payload does pass by, out of the client's sight.
	var agentInbox tap
	agentSnoop := s.connect(t, userAgent)
	agentInbox.subscribe(t, agentSnoop, inboxPrefix(userAgent)+".>")
	for _, uc := range []*userConn{snooper, agentSnoop} {
		if err := uc.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	// Another client submits jobs (the worker's answer does not repeat the
	// payload) and waits for their results.
	owner := s.connect(t, userClient)
	client, err := dispatcher.NewClient(testCtx(t), owner.Conn, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, session := range []string{"inbox-s", ""} {
		res, err := client.SubmitAndWait(testCtx(t), session, &queue.Job{Command: "pid", Payload: json.RawMessage(`{"secret":"` + marker + `"}`)})
		if err != nil || !res.OK {
			t.Fatalf("session %q: %+v, %v", session, res, err)
		}
	}
	waitFor(t, "the agent role's inbox carried both payloads", func() (bool, error) {
		_, marked := agentInbox.count(marker)
		return marked >= 2, nil
	})
	snooper.assertNoViolations(t)
	owner.assertNoViolations(t)
	all, marked := seen.count(marker)
	if marked != 0 {
		t.Fatalf("the snooping client read %d messages carrying another client's payload", marked)
	}
	// The snooper was listening: it saw both results go by.
	if all < 2 {
		t.Fatalf("the snooping client saw %d messages, want at least the 2 results: is the tap live?", all)
	}
}

// TestDefaultInboxRefused: a program started without its role's
// --inbox-prefix gets a clear error at connect time, not silent timeouts.
func TestDefaultInboxRefused(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	for _, user := range []string{userDispatcher, userAgent, userClient} {
		a := s.auth(user)
		a.InboxPrefix = ""
		opts, err := a.Options()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := cli.Connect(s.URL, "default-inbox", zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel)), append(opts, nats.NoReconnect())...)
		if err == nil {
			nc.Close()
		}
		if !errors.Is(err, cli.ErrInboxDenied) || !strings.Contains(err.Error(), "--inbox-prefix") {
			t.Errorf("%s with _INBOX: err = %v, want ErrInboxDenied naming --inbox-prefix", user, err)
		}
	}
}

// TestServeUnderDeployedPermissions: the dispatcher's service runs as the
// dispatcher user; clients submit through its NATS API and, with a token,
// its HTTP API, and agents run the jobs; nobody's permissions are violated.
func TestServeUnderDeployedPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	qcfg := queue.Config{Partitions: 8}
	dc := s.connect(t, userDispatcher)
	const token = "deploy-test-token-0123456789"
	ctx, cancel := context.WithCancel(context.Background())
	base := make(chan string, 1)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- dispatcher.Serve(ctx, dc.Conn, dispatcher.ServeConfig{
			Queue:         qcfg,
			HTTPAddr:      "127.0.0.1:0",
			HTTPTokens:    []dispatcher.HTTPToken{{Token: token, Rights: dispatcher.RightAll}},
			HTTPListening: func(u string) { base <- u },
			Ready:         func() { close(ready) },
			Logger:        zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		})
	}()
	t.Cleanup(cancel)
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve as the dispatcher user: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	url := <-base
	ac := startAgent(t, s, "serve-1", qcfg)
	cc := s.connect(t, userClient)

	// The NATS API: the reply comes back on the client's own inbox.
	msg, err := cc.Request("fleet.api.submit", []byte(`{"session":"api-s","job":{"id":"via-nats","command":"echo","payload":1}}`), 10*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"via-nats"`) {
		t.Fatalf("fleet.api.submit as client: %v, %v", msg, err)
	}
	// The HTTP API, with the token.
	req, err := http.NewRequest("POST", url+"/v1/jobs", strings.NewReader(`{"job":{"id":"via-http","command":"echo","payload":2}}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("POST /v1/jobs: %d %s", resp.StatusCode, body)
	}
	ctopo := cc.open(t)
	for id, want := range map[string]string{"via-nats": "1", "via-http": "2"} {
		r, err := ctopo.WaitResult(testCtx(t), cc.Conn, id)
		if err != nil || !r.OK || string(r.Result) != want {
			t.Fatalf("result %s: %+v, %v", id, r, err)
		}
	}
	waitFor(t, "the HTTP API serves the result", func() (bool, error) {
		req, err := http.NewRequest("GET", url+"/v1/results/via-http", nil)
		if err != nil {
			return false, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
	// The other routes, each needing its own permissions of the
	// dispatcher user: a batch (a duplicate is compared with the stored
	// job), a long poll, the progress stream of a finished job, the fleet
	// views, a dead letter's purge.
	httpDo := func(method, path, body string) (int, string) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, url+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	batch := `{"jobs":[{"job":{"id":"b1","command":"sleep","payload":{"ms":1500}}},{"job":{"id":"b1","command":"sleep","payload":{"ms":1500}}},{"job":{"id":"b1","command":"echo"}}]}`
	if code, body := httpDo("POST", "/v1/jobs/batch", batch); code != 200 || !strings.Contains(body, `"accepted":2`) || !strings.Contains(body, `"status":409`) {
		t.Errorf("POST /v1/jobs/batch: %d %s, want 2 accepted and a 409", code, body)
	}
	for _, p := range []string{"/v1/results/via-http?wait=10s", "/v1/jobs/via-http/progress", "/v1/agents", "/v1/queues", "/v1/status", "/v1/dlq"} {
		if code, body := httpDo("GET", p, ""); code != 200 {
			t.Errorf("GET %s: %d %s", p, code, body)
		}
	}
	// A queue nobody declared: the dispatcher may not look it up (the
	// server would drop the request and the API wait out its timeout), so
	// it finds it missing from the stream list, at once.
	for _, p := range []string{"/v1/results/x?queue=nosuchq", "/v1/jobs/x/progress?queue=nosuchq"} {
		start := time.Now()
		if code, body := httpDo("GET", p, ""); code != 404 || time.Since(start) > 5*time.Second {
			t.Errorf("GET %s: %d %s after %v, want a 404 at once", p, code, body, time.Since(start).Round(time.Millisecond))
		}
	}
	dtopo := dc.open(t)
	if err := dtopo.WriteDeadLetter(testCtx(t), &queue.DeadLetter{JobID: "dl-1", Subject: "fleet.job.any", Job: json.RawMessage(`{"command":"echo"}`), Kind: queue.KindExhausted}); err != nil {
		t.Fatal(err)
	}
	if code, body := httpDo("DELETE", "/v1/dlq", ""); code != 200 || !strings.Contains(body, `"purged":1`) {
		t.Errorf("DELETE /v1/dlq: %d %s", code, body)
	}
	for _, uc := range []*userConn{dc, ac, cc} {
		uc.assertNoViolations(t)
	}
}
