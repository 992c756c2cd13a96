package agent

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// progressMsg is a delivery whose InProgress always goes out.
type progressMsg struct{ jetstream.Msg }

func (progressMsg) InProgress() error { return nil }

// verdictLane is a lane on a real connection with the given ack wait, and
// mk a job of its anonymous runner delivered age ago.
func verdictLane(t *testing.T, ackWait time.Duration) (mk func(age time.Duration) *job) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	_, url, stop, err := embedded.StartTemp(ctx, "", "verdict-*", zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	ag := &Agent{epoch: time.Now().Add(-time.Hour)}
	a := &lane{ag: ag, nc: nc, log: zap.NewNop(), topo: &queue.Topology{Config: queue.Config{MaxDeliver: 5}},
		metrics: newMetrics().forQueue("default")}
	a.cfg.Queue.AckWait = ackWait
	r := &runner{a: a, partition: -1, waitCtx: ctx}
	return func(age time.Duration) *job {
		j := &job{r: r, msg: progressMsg{}, job: &queue.Job{ID: "j"}, meta: &jetstream.MsgMetadata{NumDelivered: 1}}
		j.touched.Store(ag.stamp(time.Now().Add(-age)))
		return j
	}
}

// TestKeepAliveDoesNotReviveALapsedDelivery: a held job whose ack wait ran
// out (the agent was paused, or NATS away) may have been delivered again;
// the keep-alive tick that comes on resume must not make it look fresh, or
// it would run beside its redelivery.
func TestKeepAliveDoesNotReviveALapsedDelivery(t *testing.T) {
	t.Parallel()
	mk := verdictLane(t, 2*time.Second)
	if v := mk(3 * time.Second).startVerdict(); v != startLeave {
		t.Fatalf("a delivery past its ack wait: verdict %v, want startLeave", v)
	}
	j := mk(3 * time.Second)
	j.keepAlive()
	if v := j.startVerdict(); v != startLeave {
		t.Errorf("after a keep-alive tick: verdict %v, want startLeave", v)
	}
	fresh := mk(time.Second)
	fresh.keepAlive()
	if v := fresh.startVerdict(); v != startRun {
		t.Errorf("a delivery within its ack wait: verdict %v, want startRun", v)
	}
}

// TestHandBackCarriesToTheSession: once a session's job is handed back for
// a lapsed claim, the session's next held job goes back too, even when the
// claim is back by its turn: run now, it would overtake the redelivery.
func TestHandBackCarriesToTheSession(t *testing.T) {
	t.Parallel()
	mk := verdictLane(t, 10*time.Second)
	first, next := mk(time.Second), mk(time.Second)
	first.meta.Sequence.Stream, next.meta.Sequence.Stream = 7, 9
	next.prev = first
	first.handedBack.Store(true)
	if v := next.startVerdict(); v != startHandBack {
		t.Errorf("the job after a handed-back one: verdict %v, want startHandBack", v)
	}
}

// TestRedeliveryDoesNotInheritItsHandBack: the redelivery of a job handed
// back (or left unrun) may arrive while that delivery's goroutine still
// records its end, so that it is still its session's last job: it must not
// take that fate from itself, or every redelivery would go back again, up
// to MaxDeliver, though the claim is held.
func TestRedeliveryDoesNotInheritItsHandBack(t *testing.T) {
	t.Parallel()
	mk := verdictLane(t, 10*time.Second)
	for _, fate := range []string{"handed back", "left unrun"} {
		old := mk(time.Second)
		old.meta.Sequence.Stream = 7
		if fate == "handed back" {
			old.handedBack.Store(true)
		} else {
			old.leftUnrun.Store(true)
		}
		re := mk(time.Second)
		re.meta.Sequence.Stream, re.meta.NumDelivered = 7, 2
		re.prev = old
		if v := re.startVerdict(); v != startRun {
			t.Errorf("the redelivery of a job %s, the claim held: verdict %v, want startRun", fate, v)
		}
	}
}

// TestBeatLapseVoidsOlderLeases: two heartbeats that got through further
// apart than the claim mean the registry entry may have expired between
// them, and another agent may have taken the partitions: a lease written
// before that lapse is no claim, though the heartbeats are fresh again,
// until a renewal gets through (asked for at once).
func TestBeatLapseVoidsOlderLeases(t *testing.T) {
	t.Parallel()
	ttl := 2 * time.Second
	ag := &Agent{epoch: time.Now().Add(-time.Hour)}
	ag.cfg.Queue.AgentTTL = ttl
	a := &lane{ag: ag}
	a.cfg.Queue.AgentTTL = ttl
	a.cfg.Queue.LeaseTTL = 30 * time.Second
	r := &runner{a: a, partition: 0, lease: &queue.Lease{}}
	now := time.Now()
	paused := now.Add(-10 * time.Second) // the last beat and renewal before a pause
	ag.beatGotThrough(paused)
	r.leaseOK.Store(ag.stamp(paused))
	if _, owned := r.pullDeadline(); owned {
		t.Fatal("owned 10 s after the last heartbeat, with an AgentTTL of 2 s")
	}
	ag.beatGotThrough(now) // resumed: a heartbeat gets through again
	if _, owned := r.pullDeadline(); owned {
		t.Error("the lease written before the lapse still counts as a claim")
	}
	if !ag.renewSoon.Load() {
		t.Error("no renewal asked for after the lapse")
	}
	r.leaseOK.Store(ag.stamp(now)) // the renewal got through
	if _, owned := r.pullDeadline(); !owned {
		t.Error("not owned after a renewal following the lapse")
	}
	ag.beatGotThrough(now.Add(ttl / 3)) // a regular beat: no lapse
	if _, owned := r.pullDeadline(); !owned {
		t.Error("a regular heartbeat voided the lease")
	}
}
