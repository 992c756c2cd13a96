package dispatcher

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/queue"
)

// BenchmarkDashAttempt is the dispatcher's cost per attempt event: decode
// it and put it in the ring (README "Dashboard").
func BenchmarkDashAttempt(b *testing.B) {
	d := newDash(nil, zap.NewNop(), nil)
	now := time.Now()
	data, err := json.Marshal(queue.AttemptEvent{ID: "job-0123456789", JobSeq: 123456, Session: "session-42", Command: "predict",
		MaxAttempts: 5, Attempt: 1, Agent: "agent-7", Worker: "agent-7-3", WorkerPID: 4242,
		EnqueuedAt: now, StartedAt: now, FinishedAt: now, Outcome: "ok"})
	if err != nil {
		b.Fatal(err)
	}
	m := &nats.Msg{Subject: "fleet.event.attempt.job-0123456789", Data: data}
	b.ReportAllocs()
	for b.Loop() {
		d.onAttempt(m)
	}
	if len(d.ring) != min(b.N, attemptRing) && len(d.ring) != attemptRing {
		b.Fatalf("ring holds %d", len(d.ring))
	}
	b.ReportMetric(float64(len(data)), "bytes/event")
}
