package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// publisher stores a lane's results in bursts. A result finished while
// none of the agent's earlier results waits for its PubAck is published at
// once, so a lone job's result is not delayed at all; one finished while
// some still wait is held until they are all acknowledged (or
// maxResultHold has passed, or maxResultBurst are held), then published
// with the others held meanwhile. The server then stores a burst of results
// per read and answers with one write of PubAcks, which the acker turns
// into one write of acks: a result, its PubAck and its ack each cost the
// server a read or a write per job when they came one at a time, which was
// most of its CPU per job.
type publisher struct {
	a    *lane
	in   chan finished
	done chan struct{}

	// busy is set while the loop holds or publishes a burst.
	busy atomic.Bool

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
	return &publisher{a: a, in: make(chan finished, 256), done: make(chan struct{})}
}

// store stores f's result: at once, from the caller's goroutine, when there
// is nothing to wait for (the common case of a lone job, which saves the
// loop's hop), or through the loop.
func (p *publisher) store(f finished) {
	if !p.busy.Load() && len(p.in) == 0 && p.a.pool.Waiting() == 0 && p.a.topo.JS.PublishAsyncPending() == 0 {
		f.j.publish(f)
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
	js := p.a.topo.JS
	hold := time.NewTimer(maxResultHold)
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
			hold.Reset(maxResultHold)
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
			var wait <-chan struct{}
			switch {
			case p.a.pool.Waiting() > 0:
				// A backlog: more results come as soon as
				// workers free up; the wait for a worker makes
				// a job's latency anyway.
				wait = nil
			case js.PublishAsyncPending() > 0:
				wait = js.PublishAsyncComplete()
			default:
				goto publish
			}
			select {
			case <-wait:
			case <-hold.C:
			case f, ok := <-p.in:
				if ok {
					burst = append(burst, f)
					continue
				}
			}
		}
	publish:
		hold.Stop()
		for _, f := range burst {
			f.j.publish(f)
		}
		clear(burst)
		burst = burst[:0]
		p.busy.Store(false)
		if !open {
			return
		}
	}
}
