package queue_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/queue"
)

func TestParseJob(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}.WithDefaults()
	sessSubj := "fleet.job.p.3.s1"
	hdr := func(id string) nats.Header { return nats.Header{"Nats-Msg-Id": []string{id}} }
	long := strings.Repeat("x", 129)

	tests := []struct {
		name      string
		subject   string
		hdr       nats.Header
		body      string
		want      *queue.Job // nil when an error is expected
		wantJobID string     // BadRequestError.JobID
		reason    string     // substring of the reason
	}{
		{name: "full envelope", subject: sessSubj, body: `{"id":"j1","command":"predict","payload":{"x":1},"timeout_ms":500,"max_attempts":3,"require_session":true,"meta":{"k":"v"}}`,
			want: &queue.Job{ID: "j1", Command: "predict", Payload: json.RawMessage(`{"x":1}`), TimeoutMS: 500, MaxAttempts: 3, RequireSession: true, Meta: json.RawMessage(`{"k":"v"}`), Session: "s1"}},
		{name: "id from header", subject: sessSubj, hdr: hdr("h1"), body: `{"command":"c"}`,
			want: &queue.Job{ID: "h1", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},
		{name: "envelope id agrees with header", subject: sessSubj, hdr: hdr("e1"), body: `{"id":"e1","command":"c"}`,
			want: &queue.Job{ID: "e1", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},
		{name: "replayed dead letter's header agrees", subject: sessSubj, hdr: hdr("e1-replay-17"), body: `{"id":"e1","command":"c"}`,
			want: &queue.Job{ID: "e1", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},
		{name: "empty envelope id", subject: sessSubj, hdr: hdr("h1"), body: `{"id":"","command":"c"}`,
			want: &queue.Job{ID: "h1", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},
		{name: "id from sequence", subject: "fleet.job.any", body: `{"command":"c","payload":null}`,
			want: &queue.Job{ID: "seq-42", Command: "c", MaxAttempts: queue.DefaultMaxAttempts}},
		{name: "unpartitioned session subject", subject: "fleet.job.s.abc", body: `{"command":"c"}`,
			want: &queue.Job{ID: "seq-42", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "abc"}},
		{name: "unknown fields ignored", subject: sessSubj, body: `{"command":"c","future":true}`,
			want: &queue.Job{ID: "seq-42", Command: "c", MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},

		{name: "not JSON", subject: sessSubj, hdr: hdr("h1"), body: `hello`, wantJobID: "h1", reason: "not valid JSON"},
		{name: "truncated JSON", subject: sessSubj, body: `{"id":"j1","command":"c"`, wantJobID: "j1", reason: "not valid JSON"},
		{name: "broken before id", subject: sessSubj, hdr: hdr("h1"), body: `{"command":x,"id":"j1"}`, wantJobID: "h1", reason: "not valid JSON"},
		{name: "empty body", subject: sessSubj, body: ``, wantJobID: "seq-42", reason: "empty"},
		{name: "array body", subject: sessSubj, body: `[1,2]`, wantJobID: "seq-42", reason: "JSON object"},
		{name: "null body", subject: sessSubj, body: `null`, wantJobID: "seq-42", reason: "JSON object"},
		{name: "missing command", subject: sessSubj, body: `{"id":"j1","payload":{}}`, wantJobID: "j1", reason: "command"},
		{name: "empty command", subject: sessSubj, body: `{"id":"j1","command":""}`, wantJobID: "j1", reason: "command"},
		{name: "command wrong type", subject: sessSubj, body: `{"id":"j1","command":7}`, wantJobID: "j1", reason: `"command"`},
		{name: "timeout wrong type", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":"soon"}`, wantJobID: "j1", reason: "timeout_ms"},
		{name: "timeout fractional", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":1.5}`, wantJobID: "j1", reason: "timeout_ms"},
		{name: "require_session wrong type", subject: sessSubj, body: `{"id":"j1","command":"c","require_session":"yes"}`, wantJobID: "j1", reason: "require_session"},
		{name: "id wrong type", subject: sessSubj, hdr: hdr("h1"), body: `{"id":5,"command":"c"}`, wantJobID: "h1", reason: `"id" must be a string`},
		// The outcome id rule: body id if valid, else Nats-Msg-Id if valid,
		// else seq-<stream sequence>; on disagreement the Nats-Msg-Id.
		{name: "bad id token", subject: sessSubj, body: `{"id":"a.b","command":"c"}`, wantJobID: "seq-42", reason: "job id"},
		{name: "bad id token with header", subject: sessSubj, hdr: hdr("good-hdr"), body: `{"id":"a.b","command":"c"}`, wantJobID: "good-hdr", reason: "disagrees"},
		{name: "id too long", subject: sessSubj, body: `{"id":"` + long + `","command":"c"}`, wantJobID: "seq-42", reason: "job id"},
		{name: "bad header id", subject: sessSubj, hdr: hdr("has space"), body: `{"command":"c"}`, wantJobID: "seq-42", reason: "job id"},
		{name: "non-UTF-8 header id", subject: sessSubj, hdr: hdr("\xff\xfe"), body: `{"command":"c"}`, wantJobID: "seq-42", reason: "job id"},
		{name: "body id disagrees with header", subject: sessSubj, hdr: hdr("att-x"), body: `{"id":"squat-1","command":"c"}`, wantJobID: "att-x", reason: "disagrees"},
		{name: "body id disagrees with a bad header", subject: sessSubj, hdr: hdr("a b"), body: `{"id":"squat-1","command":"c"}`, wantJobID: "seq-42", reason: "disagrees"},
		{name: "not a replay form", subject: sessSubj, hdr: hdr("e1-replay-x"), body: `{"id":"e1","command":"c"}`, wantJobID: "e1-replay-x", reason: "disagrees"},
		{name: "wildcard session token", subject: "fleet.job.s.*", body: `{"id":"w1","command":"c"}`, wantJobID: "w1", reason: "session id"},
		{name: "full wildcard session token", subject: "fleet.job.s.>", body: `{"id":"w2","command":"c"}`, wantJobID: "w2", reason: "session id"},
		{name: "bad session token", subject: "fleet.job.p.3.a:b", body: `{"id":"j1","command":"c"}`, wantJobID: "j1", reason: "session id"},
		{name: "session too long", subject: "fleet.job.p.3." + long, body: `{"id":"j1","command":"c"}`, wantJobID: "j1", reason: "session id"},
		{name: "foreign subject", subject: "other.job.any", body: `{"id":"j1","command":"c"}`, wantJobID: "j1", reason: "not a job subject"},
		{name: "payload invalid", subject: sessSubj, body: `{"id":"j1","command":"c","payload":{bad}}`, wantJobID: "j1", reason: "not valid JSON"},
		{name: "meta not object", subject: sessSubj, body: `{"id":"j1","command":"c","meta":[1]}`, wantJobID: "j1", reason: "meta"},
		{name: "max_attempts too high", subject: sessSubj, body: `{"id":"j1","command":"c","max_attempts":21}`, wantJobID: "j1", reason: "max_attempts"},
		{name: "max_attempts negative", subject: sessSubj, body: `{"id":"j1","command":"c","max_attempts":-1}`, wantJobID: "j1", reason: "max_attempts"},
		{name: "negative timeout", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":-5}`, wantJobID: "j1", reason: "timeout_ms"},
		{name: "huge timeout", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":1e40}`, wantJobID: "j1", reason: "timeout_ms"},
		{name: "timeout above 24h", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":1000000000000}`, wantJobID: "j1", reason: "between 0 and 86400000"},
		{name: "timeout at 24h", subject: sessSubj, body: `{"id":"j1","command":"c","timeout_ms":86400000}`,
			want: &queue.Job{ID: "j1", Command: "c", TimeoutMS: 86400000, MaxAttempts: queue.DefaultMaxAttempts, Session: "s1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := queue.ParseJob(tt.subject, tt.hdr, []byte(tt.body), 42, cfg)
			if tt.want != nil {
				if err != nil {
					t.Fatalf("ParseJob: %v", err)
				}
				gotJSON, _ := json.Marshal(got)
				wantJSON, _ := json.Marshal(tt.want)
				if string(gotJSON) != string(wantJSON) || got.Session != tt.want.Session {
					t.Fatalf("ParseJob = %s session %q, want %s session %q", gotJSON, got.Session, wantJSON, tt.want.Session)
				}
				return
			}
			if !errors.Is(err, queue.ErrBadRequest) {
				t.Fatalf("err = %v, want ErrBadRequest", err)
			}
			var bre *queue.BadRequestError
			if !errors.As(err, &bre) {
				t.Fatalf("err %T is not a *BadRequestError", err)
			}
			if bre.JobID != tt.wantJobID {
				t.Errorf("JobID = %q, want %q", bre.JobID, tt.wantJobID)
			}
			if !strings.Contains(bre.Reason, tt.reason) {
				t.Errorf("reason %q does not mention %q", bre.Reason, tt.reason)
			}
			if got != nil {
				t.Errorf("job returned with error: %+v", got)
			}
		})
	}
}

func TestEncodeJobRoundTrip(t *testing.T) {
	t.Parallel()
	cfg := queue.Config{}.WithDefaults()
	in := &queue.Job{ID: "j-1", Command: "run", Payload: json.RawMessage(`[1,2]`), TimeoutMS: 10, MaxAttempts: 2, Session: "ignored"}
	data, err := queue.EncodeJob(in)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "ignored") {
		t.Errorf("session leaked into body: %s", data)
	}
	out, err := queue.ParseJob(cfg.SessionSubject("s9"), nil, data, 1, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if out.ID != in.ID || out.Command != in.Command || string(out.Payload) != string(in.Payload) || out.Session != "s9" {
		t.Errorf("round trip: %+v", out)
	}
	for _, bad := range []*queue.Job{nil, {Command: ""}, {ID: "x y", Command: "c"}, {Command: "c", MaxAttempts: 99}, {Command: "c", Payload: json.RawMessage(`{`)}} {
		if _, err := queue.EncodeJob(bad); !errors.Is(err, queue.ErrBadRequest) {
			t.Errorf("EncodeJob(%+v) = %v, want ErrBadRequest", bad, err)
		}
	}
}

func FuzzParseJob(f *testing.F) {
	cfg := queue.Config{}.WithDefaults()
	f.Add("fleet.job.p.1.s1", "", []byte(`{"id":"j1","command":"c","payload":{"a":[1,2]}}`))
	f.Add("fleet.job.any", "h1", []byte(`{"command":"c","max_attempts":3,"timeout_ms":5}`))
	f.Add("fleet.job.s.x", "", []byte(`{"id":7}`))
	f.Add("fleet.job.p.9.a:b", "a b", []byte(`not json`))
	f.Add("fleet.job.any", "", []byte(`{"command":"c","meta":null,"payload":null}`))
	f.Fuzz(func(t *testing.T, subject, msgID string, data []byte) {
		var hdr nats.Header
		if msgID != "" {
			hdr = nats.Header{"Nats-Msg-Id": []string{msgID}}
		}
		j, err := queue.ParseJob(subject, hdr, data, 7, cfg)
		if err != nil {
			var bre *queue.BadRequestError
			if !errors.As(err, &bre) || !errors.Is(err, queue.ErrBadRequest) {
				t.Fatalf("error is not a *BadRequestError: %v", err)
			}
			// Every outcome is filed under a valid id (queue.OutcomeID).
			if !queue.ValidToken(bre.JobID) {
				t.Fatalf("BadRequestError carries invalid job id %q", bre.JobID)
			}
			return
		}
		if !queue.ValidToken(j.ID) || (j.Session != "" && !queue.ValidToken(j.Session)) || j.Command == "" ||
			j.MaxAttempts < 1 || j.MaxAttempts > queue.MaxAttemptsLimit || j.TimeoutMS < 0 {
			t.Fatalf("ParseJob accepted an invalid job: %+v", j)
		}
		// An accepted job's id is the one the stream deduplicated on, when
		// there is one (or its replay form).
		if msgID != "" && msgID != j.ID && !strings.HasPrefix(msgID, j.ID+"-replay-") {
			t.Fatalf("accepted job %q under Nats-Msg-Id %q", j.ID, msgID)
		}
		// What ParseJob accepts, EncodeJob can write and ParseJob reads back
		// the same.
		body, err := queue.EncodeJob(j)
		if err != nil {
			t.Fatalf("EncodeJob of a parsed job: %v", err)
		}
		j2, err := queue.ParseJob(subject, nil, body, 7, cfg)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if j2.ID != j.ID || j2.Command != j.Command || j2.Session != j.Session || j2.MaxAttempts != j.MaxAttempts {
			t.Fatalf("re-parse differs: %+v vs %+v", j2, j)
		}
	})
}
