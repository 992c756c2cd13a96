package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// publisher stores a lane's results in bursts. A result that finishes
// while jobs of the lane wait for a worker (a backlog) is held until
// maxResultBurst results are held or hold has passed, and then stored with
// the others held meanwhile; one that finishes while earlier results still
// wait for their PubAcks is held until they are back (or hold has passed);
// one that finishes with neither is stored at once, from its own goroutine,
// so a lone job's result is not delayed at all. The server then stores a
// burst of results per read and answers with one write of PubAcks, which
// the acker turns into one write of acks: a result, its PubAck and its ack
// each cost the server a read or a write per job when they came one at a
// time, which was most of its CPU per job.
type publisher struct {
	in   chan finished
	done chan struct{}
	hold time.Duration

	// busy is set while the loop holds or publishes a burst.
	busy atomic.Bool

	// waiting is the lane's checkouts waiting for a worker; inFlight the
	// results published whose PubAck has not come back, and settled a
	// channel closed once there are none; publish stores one result.
	waiting  func() int
	inFlight func() int
	settled  func() <-chan struct{}
	publish  func(finished)

	start, stop sync.Once
	started     bool
}

// finished is a job whose result is to be stored, and the attempt event
// published with it (nil: none).
type finished struct {
	j     *job
	res   *queue.Result
	event []byte
}

const (
	maxResultHold  = time.Millisecond
	maxResultBurst = 64
)

func newPublisher(a *lane) *publisher {
	return &publisher{
		in: make(chan finished, 256), done: make(chan struct{}), hold: maxResultHold,
		waiting:  func() int { return a.pool.Waiting() },
		inFlight: func() int { return a.topo.JS.PublishAsyncPending() },
		settled:  func() <-chan struct{} { return a.topo.JS.PublishAsyncComplete() },
		publish:  func(f finished) { f.j.publish(f) },
	}
}

// store stores f's result: at once, from the caller's goroutine, when there
// is nothing to wait for (the common case of a lone job, which saves the
// loop's hop), or through the loop.
func (p *publisher) store(f finished) {
	if !p.busy.Load() && len(p.in) == 0 && p.waiting() == 0 && p.inFlight() == 0 {
		p.publish(f)
		return
	}
	p.in <- f
}

// run starts the publisher's loop.
func (p *publisher) run() {
	p.start.Do(func() {
		p.started = true
		go p.loop()
	})
}

// close ends the loop once every result handed to it is published; no job
// may finish after it is called.
func (p *publisher) close() {
	p.stop.Do(func() {
		p.start.Do(func() {}) // a publisher never run stays so
		close(p.in)
		if p.started {
			<-p.done
		}
	})
}

func (p *publisher) loop() {
	defer close(p.done)
	hold := time.NewTimer(p.hold)
	hold.Stop()
	var burst []finished
	for {
		if len(burst) == 0 {
			f, ok := <-p.in
			if !ok {
				return
			}
			burst = append(burst, f)
			p.busy.Store(true)
			hold.Reset(p.hold)
		}
		// Take what else is waiting.
		open := true
	more:
		for len(burst) < maxResultBurst {
			select {
			case f, ok := <-p.in:
				if !ok {
					open = false
					break more
				}
				burst = append(burst, f)
			default:
				break more
			}
		}
		if open && len(burst) < maxResultBurst {
			if until, ok := p.holdFor(); ok {
				select {
				case <-until:
				case <-hold.C:
				case f, ok := <-p.in:
					if ok {
						burst = append(burst, f)
						continue
					}
				}
			}
		}
		hold.Stop()
		for _, f := range burst {
			p.publish(f)
		}
		clear(burst)
		burst = burst[:0]
		p.busy.Store(false)
		if !open {
			return
		}
	}
}

// holdFor reports whether the loop holds its burst for more results, and
// what ends the hold early besides the timer and a full burst (nil:
// nothing).
func (p *publisher) holdFor() (until <-chan struct{}, ok bool) {
	switch {
	case p.waiting() > 0:
		// A backlog: more results come as soon as workers free up, and
		// the wait for a worker makes a job's latency anyway.
		return nil, true
	case p.inFlight() > 0:
		return p.settled(), true
	}
	return nil, false
}
