package queue

import (
	"testing"
)

// TestQueueSubjects pins the two spellings: the default queue keeps the
// subjects of fleets without queues; another queue puts its name after
// "job"; names that would collide with the grammar are refused.
func TestQueueSubjects(t *testing.T) {
	def := Config{}.WithDefaults()
	gpu := def.ForQueue("gpu")
	for _, c := range []struct{ got, want string }{
		{def.SessionSubject("u1"), "fleet.job.s.u1"},
		{def.AnySubject(), "fleet.job.any"},
		{def.JobsStream(), "FLEET_JOBS"},
		{def.PartitionFilter(3), "fleet.job.p.3.*"},
		{def.leaseKey(3), "p-3"},
		{gpu.SessionSubject("u1"), "fleet.job.gpu.s.u1"},
		{gpu.AnySubject(), "fleet.job.gpu.any"},
		{gpu.JobsStream(), "FLEET_JOBS_gpu"},
		{gpu.PartitionFilter(3), "fleet.job.gpu.p.3.*"},
		{gpu.partitionTransform(), "fleet.job.gpu.p.{{partition(64,1)}}.{{wildcard(1)}}"},
		{gpu.leaseKey(3), "gpu.p-3"},
		{def.ForQueue("default").JobsStream(), "FLEET_JOBS"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	for _, c := range []struct {
		subject, queue, session string
		ok                      bool
	}{
		{"fleet.job.s.u1", "default", "u1", true},
		{"fleet.job.any", "default", "", true},
		{"fleet.job.p.7.u1", "default", "u1", true},
		{"fleet.job.gpu.s.u1", "gpu", "u1", true},
		{"fleet.job.gpu.any", "gpu", "", true},
		{"fleet.job.gpu.p.7.u1", "gpu", "u1", true},
		{"fleet.job.default.any", "", "", false},
		{"fleet.job.gpu", "", "", false},
		{"fleet.job.gpu.x", "", "", false},
		{"fleet.result.x", "", "", false},
	} {
		q, s, ok := def.ParseJobSubject(c.subject)
		if q != c.queue || s != c.session || ok != c.ok {
			t.Errorf("ParseJobSubject(%q) = %q, %q, %v; want %q, %q, %v", c.subject, q, s, ok, c.queue, c.session, c.ok)
		}
	}
	for _, name := range []string{"s", "p", "any", "a.b", "", "x y"} {
		err := ValidateQueueName(name)
		if (err == nil) != (name == "") {
			t.Errorf("ValidateQueueName(%q) = %v", name, err)
		}
	}
	if err := (Config{Queue: "any"}).WithDefaults().Validate(); err == nil {
		t.Error("Config with queue \"any\" validated")
	}
	if sub, ok := def.publishSubject("fleet.job.gpu.p.7.u1"); !ok || sub != "fleet.job.gpu.s.u1" {
		t.Errorf("publishSubject = %q, %v", sub, ok)
	}
}
