package queue_test

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// BenchmarkParseJob is the agent's decode of one delivered job with a
// 100-byte payload: part of the agent's CPU per job (README "Performance").
func BenchmarkParseJob(b *testing.B) {
	cfg := queue.Config{}.WithDefaults()
	data := []byte(`{"id":"b1234567890-42","command":"echo","payload":"` + strings.Repeat("x", 98) + `"}`)
	hdr := nats.Header{jetstream.MsgIDHeader: []string{"b1234567890-42"}}
	subject := cfg.SessionSubject("sess-17")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := queue.ParseJob(subject, hdr, data, 42, cfg); err != nil {
			b.Fatal(err)
		}
	}
}
