package agent_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// BenchmarkAttemptEventPublish is an agent's cost per attempt for the
// dashboard: marshal the event and publish it on core NATS to a real
// embedded server (README "Dashboard").
func BenchmarkAttemptEventPublish(b *testing.B) {
	nc := fleettest.StartServer(b).Connect(b)
	now := time.Now()
	ev := queue.AttemptEvent{ID: "job-0123456789", JobSeq: 123456, Session: "session-42", Command: "predict",
		MaxAttempts: 5, Attempt: 1, Agent: "agent-7", Worker: "agent-7-3", WorkerPID: 4242,
		EnqueuedAt: now, StartedAt: now, FinishedAt: now, Outcome: "ok"}
	subj := queue.Config{Prefix: "fleet"}.AttemptEventSubject(ev.ID)
	b.ReportAllocs()
	for b.Loop() {
		data, err := json.Marshal(&ev)
		if err != nil {
			b.Fatal(err)
		}
		if err := nc.Publish(subj, data); err != nil {
			b.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
}
