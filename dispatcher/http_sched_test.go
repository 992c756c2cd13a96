package dispatcher_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestHTTPSchedules: delayed submits (at, in) and the schedule routes, with
// their status codes and rights; status lists what is scheduled.
func TestHTTPSchedules(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{HTTPTokens: testTokens(), Queue: queue.Config{Schedules: true}})
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
		says                            string
	}{
		{"delay in", "POST", "/v1/jobs", tokSubmit, `{"session":"s1","in":"90s","job":{"id":"d-in","command":"echo"}}`, 200, `"due":"`},
		{"delay at", "POST", "/v1/jobs", tokSubmit, `{"at":"` + future + `","job":{"id":"d-at","command":"echo"}}`, 200, `"due":"` + future},
		{"delay duplicate", "POST", "/v1/jobs", tokSubmit, `{"at":"` + future + `","job":{"id":"d-at","command":"echo"}}`, 200, `"duplicate":true`},
		// A retry is due when the job first submitted is, whatever it asks.
		{"delay duplicate, later", "POST", "/v1/jobs", tokSubmit, `{"in":"5h","job":{"id":"d-at","command":"echo"}}`, 200, `"due":"` + future},
		{"delay, another body", "POST", "/v1/jobs", tokSubmit, `{"at":"` + future + `","job":{"id":"d-at","command":"echo","payload":1}}`, 409, "d-at"},
		{"delay, another session", "POST", "/v1/jobs", tokSubmit, `{"session":"s9","at":"` + future + `","job":{"id":"d-at","command":"echo"}}`, 409, "d-at"},
		{"far at", "POST", "/v1/jobs", tokSubmit, `{"at":"9999-12-31T23:59:59Z","job":{"command":"echo"}}`, 400, "years ahead"},
		{"far in", "POST", "/v1/jobs", tokSubmit, `{"in":"2562047h","job":{"command":"echo"}}`, 400, "years ahead"},
		{"at and in", "POST", "/v1/jobs", tokSubmit, `{"at":"` + future + `","in":"1s","job":{"command":"echo"}}`, 400, "not both"},
		{"bad in", "POST", "/v1/jobs", tokSubmit, `{"in":"-5s","job":{"command":"echo"}}`, 400, "positive duration"},
		{"bad at", "POST", "/v1/jobs", tokSubmit, `{"at":"tomorrow","job":{"command":"echo"}}`, 400, "RFC 3339"},
		{"past at", "POST", "/v1/jobs", tokSubmit, `{"at":"2001-01-01T00:00:00Z","job":{"command":"echo"}}`, 400, "in the past"},
		{"bad ttl", "POST", "/v1/jobs", tokSubmit, `{"job":{"command":"echo","ttl_ms":-1}}`, 400, "ttl_ms"},
		{"add", "POST", "/v1/schedules", tokSubmit, `{"name":"nightly","cron":"0 2 * * *","session":"s1","job":{"command":"echo"}}`, 201, `"next":"`},
		{"add again", "POST", "/v1/schedules", tokSubmit, `{"name":"nightly","every":"1h","job":{"command":"echo"}}`, 409, "exists"},
		{"replace", "POST", "/v1/schedules", tokSubmit, `{"name":"nightly","every":"1h","replace":true,"job":{"command":"echo"}}`, 201, `"@every 1h0m0s"`},
		{"add bad cron", "POST", "/v1/schedules", tokSubmit, `{"name":"x","cron":"0 2 *","job":{"command":"echo"}}`, 400, "3 fields"},
		{"add misspelt", "POST", "/v1/schedules", tokSubmit, `{"name":"x","evry":"1h","job":{"command":"echo"}}`, 400, "evry"},
		{"add without right", "POST", "/v1/schedules", tokRead, `{"name":"x","every":"1h","job":{"command":"echo"}}`, 403, "submit"},
		{"list without right", "GET", "/v1/schedules", tokSubmit, "", 403, "read"},
		{"list", "GET", "/v1/schedules", tokRead, "", 200, `"delayed_total":2`},
		{"rm bad name", "DELETE", "/v1/schedules/a.b", tokSubmit, "", 400, "schedule name"},
		{"rm", "DELETE", "/v1/schedules/nightly", tokSubmit, "", 204, ""},
		{"rm again", "DELETE", "/v1/schedules/nightly", tokSubmit, "", 404, "no schedule"},
	} {
		r := call(t, nil, tc.method, s.URL+tc.path, tc.token, tc.body)
		if r.Status != tc.want || !strings.Contains(r.Body, tc.says) {
			t.Errorf("%s: %d %.300s; want %d saying %q", tc.name, r.Status, r.Body, tc.want, tc.says)
		}
	}
	// The NATS API takes the same fields.
	msg, err := nc.Request("fleet.api.submit", []byte(`{"in":"1h","job":{"id":"d-micro","command":"echo"}}`), 10*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"due":"`) {
		t.Fatalf("fleet.api.submit with in: %v %s", err, msgData(msg))
	}
	c, err := dispatcher.NewClient(context.Background(), nc, queue.Config{Schedules: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pending != 0 || st.Schedules.NDelayed != 3 || len(st.Schedules.Schedules) != 0 {
		b, _ := json.Marshal(st.Schedules)
		t.Fatalf("status: pending %d (schedules are not jobs waiting), schedules %s", st.Pending, b)
	}
	var table strings.Builder
	if err := st.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "DELAYED JOB") || !strings.Contains(table.String(), "d-in") {
		t.Fatalf("status table lacks the delayed jobs:\n%s", table.String())
	}
}

func msgData(m *nats.Msg) string {
	if m == nil {
		return ""
	}
	return string(m.Data)
}
