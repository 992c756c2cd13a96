package agent

import (
	"sync"
	"testing"
)

// TestCrewReusesMembers: jobs run one after another share one member; jobs
// that run at once each get their own; close waits for every member.
func TestCrewReusesMembers(t *testing.T) {
	c := newCrew()
	for range 50 {
		done := make(chan struct{})
		c.run(func() { close(done) })
		<-done
	}
	// A member is idle again only once it waits in its select: a run
	// before that starts another member, which is allowed, so the bound
	// is loose; without reuse every job would start one.
	if n := c.started.Load(); n > 25 {
		t.Errorf("50 jobs run one after another started %d members, want them reused", n)
	}

	release := make(chan struct{})
	var running sync.WaitGroup
	before := c.started.Load()
	for range 8 {
		running.Add(1)
		c.run(func() {
			running.Done()
			<-release
		})
	}
	running.Wait() // all 8 run at once: none waited for another
	if n := c.started.Load() - before; n > 8 {
		t.Errorf("8 concurrent jobs started %d new members, want at most 8", n)
	}
	close(release)
	c.close() // returns once every member has exited (goleak checks the rest)
}
