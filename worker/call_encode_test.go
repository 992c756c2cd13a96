package worker

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/procfleet/procfleet/worker/protocol"
)

// TestAppendCallMatchesEncoder checks the hand-written call frame against
// encoding/json: the same object, or a refusal that leaves it to the
// encoder.
func TestAppendCallMatchesEncoder(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		m      protocol.Message
		wantOK bool
	}{
		{"minimal", protocol.Message{Type: protocol.TypeCall, ID: 1, Command: "echo", Payload: json.RawMessage(`null`)}, true},
		{"full", protocol.Message{Type: protocol.TypeCall, ID: 1 << 40, Command: "predict", Session: "s-1_a",
			NewSession: true, JobID: "job-7", Attempt: 3, DeadlineMS: 1767225600123,
			Payload: json.RawMessage(`{"a": [1, 2.5, "x\"y"], "b": {"c": null}}`)}, true},
		{"no payload", protocol.Message{Type: protocol.TypeCall, ID: 2, Command: "ping"}, true},
		{"unicode command", protocol.Message{Type: protocol.TypeCall, ID: 3, Command: "é", Payload: json.RawMessage(`1`)}, false},
		{"quote in job id", protocol.Message{Type: protocol.TypeCall, ID: 4, Command: "c", JobID: `a"b`}, false},
		{"control char in session", protocol.Message{Type: protocol.TypeCall, ID: 5, Command: "c", Session: "a\nb"}, false},
		{"invalid payload", protocol.Message{Type: protocol.TypeCall, ID: 6, Command: "c", Payload: json.RawMessage(`{nope`)}, false},
		{"not a call field", protocol.Message{Type: protocol.TypeCall, ID: 7, Command: "c", Data: json.RawMessage(`1`)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := appendCall(nil, &tc.m)
			if ok != tc.wantOK {
				t.Fatalf("appendCall ok = %v, want %v (%s)", ok, tc.wantOK, got)
			}
			if !ok {
				return
			}
			want, err := json.Marshal(&tc.m)
			if err != nil {
				t.Fatal(err)
			}
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("appendCall wrote invalid JSON %s: %v", got, err)
			}
			if err := json.Unmarshal(want, &w); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("appendCall = %s\nencoder   = %s", got, want)
			}
			var back protocol.Message
			if err := protocol.Decode(got, &back); err != nil || back.Type != protocol.TypeCall || back.ID != tc.m.ID {
				t.Fatalf("Decode(%s) = %+v, %v", got, back, err)
			}
		})
	}
}
