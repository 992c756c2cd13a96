package queue_test

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// BenchmarkParseJob is the agent's decode of one delivered 100-byte job.
func BenchmarkParseJob(b *testing.B) {
	cfg := queue.Config{}.WithDefaults()
	payload := []byte(`{"id":"b1234567890-42","command":"echo","payload":"` + string(make([]byte, 0)) + `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}`)
	hdr := nats.Header{jetstream.MsgIDHeader: []string{"b1234567890-42"}}
	subject := cfg.SessionSubject("sess-17")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := queue.ParseJob(subject, hdr, payload, 42, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
