package queue

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// TestAppendResultMatchesMarshal checks the hand-written result envelope
// against json.Marshal: the same object, or a refusal that leaves it to
// json.Marshal.
func TestAppendResultMatchesMarshal(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 27, 23, 40, 1, 123456789, time.UTC)
	for _, tc := range []struct {
		name   string
		r      Result
		wantOK bool
	}{
		{"ok", Result{ID: "j1", JobSeq: 18446744073709551615, OK: true, Result: json.RawMessage(`{"d": [1, "two"]}`), Session: "s1", Agent: "a-1",
			Worker: "a-1-3", WorkerPID: 4242, NewSession: true, Attempt: 2,
			EnqueuedAt: now.Add(-time.Second), StartedAt: now.In(time.FixedZone("x", 3600)), FinishedAt: now.Add(time.Millisecond)}, true},
		{"minimal", Result{ID: "j2"}, true},
		{"app error", Result{ID: "j3", Error: &ErrorInfo{Kind: KindApp, Message: "boom", Type: "ValueError"}}, true},
		{"error without type", Result{ID: "j4", Error: &ErrorInfo{Kind: KindTimeout, Message: "late"}}, true},
		{"quoted message", Result{ID: "j5", Error: &ErrorInfo{Kind: KindApp, Message: `bad "x"`}}, false},
		{"html in message", Result{ID: "j6", Error: &ErrorInfo{Kind: KindApp, Message: "a<b"}}, false},
		{"unicode agent", Result{ID: "j7", Agent: "agént"}, false},
		{"invalid result", Result{ID: "j8", OK: true, Result: json.RawMessage(`{`)}, false},
		{"far future", Result{ID: "j9", FinishedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := appendResult(nil, &tc.r)
			if ok != tc.wantOK {
				t.Fatalf("appendResult ok = %v, want %v (%s)", ok, tc.wantOK, got)
			}
			if !ok {
				return
			}
			want, err := json.Marshal(&tc.r)
			if err != nil {
				t.Fatal(err)
			}
			var g, w any
			if err := json.Unmarshal(got, &g); err != nil {
				t.Fatalf("appendResult wrote invalid JSON %s: %v", got, err)
			}
			if err := json.Unmarshal(want, &w); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("appendResult = %s\nMarshal      = %s", got, want)
			}
			back, err := decodeResult(tc.r.ID, got)
			if err != nil || !back.FinishedAt.Equal(tc.r.FinishedAt) || back.OK != tc.r.OK {
				t.Fatalf("decodeResult(%s) = %+v, %v", got, back, err)
			}
		})
	}
}
