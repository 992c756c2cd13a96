package dispatcher_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/queue"
)

// cancelStored reports whether FLEET_CANCELS holds a cancel of id.
func cancelStored(t *testing.T, s served, id string) bool {
	t.Helper()
	js, err := jetstream.New(s.NC)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	st, err := js.Stream(ctx, "FLEET_CANCELS")
	if err != nil {
		t.Fatal(err)
	}
	_, err = st.GetLastMsgForSubject(ctx, "fleet.cancel."+id)
	return err == nil
}

// DELETE /v1/jobs/{id} records a cancel with the submit right: 202 for a job
// without a result, 200 "finished" for one that has a result (which it
// keeps), 400 for a bad id, 401/403 without the right.
func TestHTTPCancel(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPTokens: testTokens()})
	if r := call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/job-x", "", ""); r.Status != http.StatusUnauthorized {
		t.Fatalf("no token: %d %s", r.Status, r.Body)
	}
	if r := call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/job-x", tokRead, ""); r.Status != http.StatusForbidden {
		t.Fatalf("read token: %d %s", r.Status, r.Body)
	}
	if cancelStored(t, s, "job-x") {
		t.Fatal("a refused cancel was stored")
	}
	r := call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/job-x", tokSubmit, "")
	var got dispatcher.CancelReply
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil || r.Status != http.StatusAccepted || got.ID != "job-x" || got.Finished {
		t.Fatalf("cancel: %d %s (%v)", r.Status, r.Body, err)
	}
	if !cancelStored(t, s, "job-x") {
		t.Fatal("cancel not stored in FLEET_CANCELS")
	}
	// Idempotent.
	if r := call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/job-x", tokSubmit, ""); r.Status != http.StatusAccepted {
		t.Fatalf("second cancel: %d %s", r.Status, r.Body)
	}
	if r := call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/a.b", tokSubmit, ""); r.Status != http.StatusBadRequest {
		t.Fatalf("bad id: %d %s", r.Status, r.Body)
	}

	client, err := dispatcher.NewClient(t.Context(), s.NC, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.Topology().StoreResult(t.Context(), &queue.Result{ID: "job-done", OK: true, Result: json.RawMessage(`1`)}); err != nil {
		t.Fatal(err)
	}
	r = call(t, nil, http.MethodDelete, s.URL+"/v1/jobs/job-done", tokSubmit, "")
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil || r.Status != http.StatusOK || !got.Finished {
		t.Fatalf("cancel of a finished job: %d %s", r.Status, r.Body)
	}
	if res, err := client.Topology().GetResult(t.Context(), "job-done"); err != nil || !res.OK {
		t.Fatalf("finished job's result: %+v, %v", res, err)
	}
}

// fleet.api.cancel takes {"id": ...}; a bad body or id is a 400.
func TestCancelMicro(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	msg, err := s.NC.Request("fleet.api.cancel", []byte(`{"id":"job-m"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got dispatcher.CancelReply
	if err := json.Unmarshal(msg.Data, &got); err != nil || got.ID != "job-m" || got.Finished {
		t.Fatalf("reply %s (%v)", msg.Data, err)
	}
	if !cancelStored(t, s, "job-m") {
		t.Fatal("cancel not stored")
	}
	for _, body := range []string{`{"id":"a b"}`, `{"job":"x"}`, `nope`, `{"id":"x"} {}`} {
		msg, err := s.NC.Request("fleet.api.cancel", []byte(body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if code := msg.Header.Get("Nats-Service-Error-Code"); code != "400" {
			t.Errorf("%s: code %q (%s), want 400", body, code, msg.Header.Get("Nats-Service-Error"))
		}
	}
}
