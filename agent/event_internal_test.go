package agent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// TestAppendAttemptEvent pins the hand-written encoder to encoding/json:
// byte for byte, awkward strings and zero values included.
func TestAppendAttemptEvent(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 23, 4, 5, 123456789, time.FixedZone("x", 3600))
	for _, ev := range []queue.AttemptEvent{
		{},
		{ID: "j1", Attempt: 1, Agent: "a", Outcome: "ok"},
		{ID: "job-0123456789", JobSeq: 123456, Queue: "gpu", Session: "s-42", Command: "predict", TimeoutMS: 30000,
			MaxAttempts: 5, Attempt: 3, Agent: "agent-7", Worker: "agent-7-3", WorkerPID: 4242,
			EnqueuedAt: now, StartedAt: now.UTC(), FinishedAt: now.Add(time.Second), Outcome: "failed", Kind: "app",
			Error: "ValueError: \"bad\" \\ path\n\ttab <b>&amp; \x00\x1f\b\f\r\x01 \u2028\u2029 é 😀 \xff\xfe end"},
		{ID: "x", Attempt: -1, Agent: strings.Repeat("é", 40), Outcome: "retry", Error: "\x7f\u00a0"},
	} {
		want, err := json.Marshal(&ev)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendAttemptEvent(nil, &ev); string(got) != string(want) {
			t.Errorf("encoded\n%s\nwant\n%s", got, want)
		}
	}
}

// BenchmarkAttemptEventPublish is an agent's cost per attempt for the
// dashboard: encode the event and publish it on core NATS to a real
// embedded server (README "Dashboard").
func BenchmarkAttemptEventPublish(b *testing.B) {
	srv, url, err := embedded.Start(context.Background(), embedded.Config{StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	nc, err := nats.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	now := time.Now()
	ev := queue.AttemptEvent{ID: "job-0123456789", JobSeq: 123456, Session: "session-42", Command: "predict",
		MaxAttempts: 5, Attempt: 1, Agent: "agent-7", Worker: "agent-7-3", WorkerPID: 4242,
		EnqueuedAt: now, StartedAt: now, FinishedAt: now, Outcome: "ok"}
	subj := queue.Config{Prefix: "fleet"}.AttemptEventSubject(ev.ID)
	b.ReportAllocs()
	for b.Loop() {
		if err := nc.Publish(subj, appendAttemptEvent(make([]byte, 0, 384), &ev)); err != nil {
			b.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
}
