package agent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// TestFreeDeliveryCount pins the free-delivery record in the poison bucket
// (free.go): a delivery handed back is counted once however often it is
// recorded; a redelivery's attempt is its delivery count less the free
// ones; a record from a later delivery than the current one (the consumer
// counts anew) or an unreadable one is ignored; a killed agent writes
// nothing; the job's end deletes the record; the poison guard's key for the
// same job is another key.
func TestFreeDeliveryCount(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	_, url, stop, err := embedded.StartTemp(ctx, "", "freecount-*", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	topo, err := queue.Ensure(ctx, js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := queue.OpenPoison(ctx, js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	a := &lane{deaths: kv, baseCtx: ctx, log: zap.NewNop(), topo: topo, killed: new(atomic.Bool)}
	r := &runner{a: a}
	delivery := func(n uint64) *job {
		j := &job{r: r, job: &queue.Job{ID: "j"}, attempt: int(n), meta: &jetstream.MsgMetadata{
			Stream: "FLEET_JOBS", NumDelivered: n, Sequence: jetstream.SequencePair{Stream: 7}}}
		j.loadFree()
		return j
	}
	wantAttempt := func(n uint64, want int) {
		t.Helper()
		if got := delivery(n).attempt; got != want {
			t.Errorf("delivery %d: attempt %d, want %d", n, got, want)
		}
	}

	wantAttempt(2, 2) // nothing recorded
	d1 := delivery(1)
	d1.recordFree()
	d1.recordFree() // the same delivery again: counted once
	wantAttempt(2, 1)
	wantAttempt(3, 2)
	d3 := delivery(3)
	d3.recordFree()
	d3.recordFree() // counted once
	wantAttempt(4, 2)
	wantAttempt(8, 6)
	// The consumer counts deliveries anew (recreated): the record, from
	// delivery 3, is older than this delivery 2 says, and is ignored.
	wantAttempt(2, 2)
	wantAttempt(3, 3)

	if _, err := kv.Get(ctx, "FLEET_JOBS.7"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("poison guard's key for the job: %v, want not found", err)
	}

	// A killed agent (a simulated crash) writes nothing.
	a.killed.Store(true)
	delivery(4).recordFree()
	a.killed.Store(false)
	wantAttempt(5, 3)

	// The job ends: its record goes.
	end := delivery(5)
	if end.free != 2 {
		t.Fatalf("free %d, want 2", end.free)
	}
	end.forgetFree()
	wantAttempt(6, 6)

	// An unreadable record is ignored.
	if _, err := kv.Put(ctx, "free.FLEET_JOBS.7", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	wantAttempt(3, 3)
	delivery(3).recordFree() // and written over
	wantAttempt(4, 3)
}
