package queue

import (
	"slices"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestWithSchedulesDiscardRule: the server refuses schedules on a stream
// that discards new messages; a jobs stream with limits keeps DiscardNew
// (a full queue refuses jobs, never drops them) and goes without schedules,
// one without limits gets them.
func TestWithSchedulesDiscardRule(t *testing.T) {
	t.Parallel()
	c := Config{Schedules: true}.WithDefaults()
	limited := c.withSchedules(jetstream.StreamConfig{Subjects: []string{"fleet.job.any"}, Discard: jetstream.DiscardNew, MaxMsgs: 10, MaxBytes: -1})
	if limited.AllowMsgSchedules || limited.Discard != jetstream.DiscardNew || len(limited.Subjects) != 1 {
		t.Fatalf("limited stream: %+v", limited)
	}
	open := c.withSchedules(jetstream.StreamConfig{Subjects: []string{"fleet.job.any"}, Discard: jetstream.DiscardNew, MaxMsgs: -1, MaxBytes: -1})
	if !open.AllowMsgSchedules || !open.AllowRollup || open.Discard != jetstream.DiscardOld ||
		!slices.Contains(open.Subjects, "fleet.delay.*") || !slices.Contains(open.Subjects, "fleet.schedule.*") {
		t.Fatalf("unlimited stream: %+v", open)
	}
	for s, want := range map[string]bool{
		"fleet.schedule.*": true, "fleet.delay.*": true, "fleet.delay.q.*": true, "x.schedule.q.*": true,
		"fleet.job.delay.s.*": false, "fleet.job.any": false, "fleet.job.s.*": false, "delay": false,
	} {
		if got := IsScheduleSubject(s); got != want {
			t.Errorf("IsScheduleSubject(%q) = %v", s, got)
		}
	}
}
