package agent

import (
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// fakeOutlet stands in for the pool's backlog, the JetStream context's
// results in flight and the store, so that the publisher's choices can be
// driven one step at a time.
type fakeOutlet struct {
	waiting, inFlight atomic.Int64
	settledCh         chan struct{}

	mu        sync.Mutex
	published []string
}

func newTestPublisher(o *fakeOutlet) *publisher {
	o.settledCh = make(chan struct{})
	return &publisher{
		in: make(chan finished, 256), done: make(chan struct{}), hold: time.Hour,
		waiting:  func() int { return int(o.waiting.Load()) },
		inFlight: func() int { return int(o.inFlight.Load()) },
		settled:  func() <-chan struct{} { return o.settledCh },
		publish: func(f finished) {
			o.mu.Lock()
			o.published = append(o.published, f.res.ID)
			o.mu.Unlock()
		},
	}
}

func (o *fakeOutlet) got() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.published)
}

func finishedResult(id string) finished { return finished{res: &queue.Result{ID: id}} }

// waitFor polls cond until it holds, or fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPublisherLoneResultAtOnce: with no backlog and nothing in flight a
// result is stored before store returns, from the caller's goroutine (the
// loop is not even running).
func TestPublisherLoneResultAtOnce(t *testing.T) {
	o := &fakeOutlet{}
	p := newTestPublisher(o)
	p.store(finishedResult("a"))
	if got := o.got(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("published %v before store returned, want [a]", got)
	}
	p.close()
}

// TestPublisherBurstUnderBacklog: while jobs wait for a worker, results are
// held (here with a hold of an hour) until a full burst, which is then
// stored at once and in order; close stores what is still held.
func TestPublisherBurstUnderBacklog(t *testing.T) {
	o := &fakeOutlet{}
	o.waiting.Store(3)
	p := newTestPublisher(o)
	p.run()
	var want []string
	for i := range maxResultBurst - 1 {
		id := "r" + strconv.Itoa(i)
		want = append(want, id)
		p.store(finishedResult(id))
	}
	waitFor(t, "the loop to hold the results", func() bool { return p.busy.Load() && len(p.in) == 0 })
	if got := o.got(); len(got) != 0 {
		t.Fatalf("published %d results under a backlog before the burst was full", len(got))
	}
	last := "r" + strconv.Itoa(maxResultBurst-1)
	want = append(want, last)
	p.store(finishedResult(last))
	waitFor(t, "the full burst to be stored", func() bool { return len(o.got()) == maxResultBurst })
	if got := o.got(); !slices.Equal(got, want) {
		t.Fatalf("burst stored as %v, want %v", got, want)
	}

	p.store(finishedResult("tail-1"))
	p.store(finishedResult("tail-2"))
	waitFor(t, "the loop to hold the tail", func() bool { return p.busy.Load() && len(p.in) == 0 })
	p.close()
	if got := o.got(); !slices.Equal(got[maxResultBurst:], []string{"tail-1", "tail-2"}) {
		t.Fatalf("close stored %v of the held tail, want [tail-1 tail-2]", got[maxResultBurst:])
	}
}

// TestPublisherWaitsForPubAcks: with no backlog but results in flight, a
// result is held until their PubAcks are back, then stored.
func TestPublisherWaitsForPubAcks(t *testing.T) {
	o := &fakeOutlet{}
	o.inFlight.Store(1)
	p := newTestPublisher(o)
	p.run()
	p.store(finishedResult("next"))
	waitFor(t, "the loop to hold the result", func() bool { return p.busy.Load() && len(p.in) == 0 })
	if got := o.got(); len(got) != 0 {
		t.Fatalf("published %v while a PubAck was outstanding", got)
	}
	o.inFlight.Store(0)
	close(o.settledCh)
	waitFor(t, "the result to be stored once the PubAcks are back", func() bool { return len(o.got()) == 1 })
	p.close()
}

// TestPublisherHoldEnds: a held result is stored once the hold has passed,
// though the backlog remains.
func TestPublisherHoldEnds(t *testing.T) {
	o := &fakeOutlet{}
	o.waiting.Store(1)
	p := newTestPublisher(o)
	p.hold = 5 * time.Millisecond
	p.run()
	for i := range 3 {
		p.store(finishedResult(fmt.Sprint(i)))
	}
	waitFor(t, "the held results to be stored after the hold", func() bool { return len(o.got()) == 3 })
	p.close()
}
