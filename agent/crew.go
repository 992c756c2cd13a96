package agent

import (
	"sync"
	"sync/atomic"
	"time"
)

// crew runs a lane's jobs on goroutines that outlive one job: a member that
// has run a job waits a while for the next instead of exiting, so the stack
// a job's calls grew serves the next job too. With a new goroutine per job,
// growing its stack (runtime.newstack) was about 8 % of the agent's CPU.
type crew struct {
	work chan func() // unbuffered: a send succeeds only to an idle member
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
	// started counts the members ever started.
	started atomic.Int64
}

// crewIdle is how long a member waits for another job before it exits.
const crewIdle = 10 * time.Second

func newCrew() *crew {
	return &crew{work: make(chan func()), stop: make(chan struct{})}
}

// run runs f on an idle member, or on a new one. It must not be called
// after close.
func (c *crew) run(f func()) {
	select {
	case c.work <- f:
		return
	default:
	}
	c.wg.Add(1)
	c.started.Add(1)
	go c.member(f)
}

func (c *crew) member(f func()) {
	defer c.wg.Done()
	t := time.NewTimer(crewIdle)
	defer t.Stop()
	for {
		f()
		f = nil
		t.Reset(crewIdle)
		select {
		case f = <-c.work:
		case <-t.C:
			return
		case <-c.stop:
			return
		}
	}
}

// close tells idle members to exit and waits for every member to finish
// its job and exit.
func (c *crew) close() {
	c.once.Do(func() { close(c.stop) })
	c.wg.Wait()
}
