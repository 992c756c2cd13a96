package agent

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// lapsedFreeWait bounds the write of the free record of a job handed back
// for a lapsed claim (recordFree).
const lapsedFreeWait = time.Second

// outagePoll is how often a call held by startVerdict looks at the
// connection.
const outagePoll = 20 * time.Millisecond

// keepAlive marks the job's message in progress, restarting the server's
// ack wait. Sent while disconnected, the mark waits in the client's buffer
// and may arrive too late, so only one sent while connected counts as
// touched. None is sent once the ack wait has run out (NATS was away, or
// the agent paused): the server may have delivered the job again, so the
// job keeps its old stamp, and startVerdict leaves it unrun.
func (j *job) keepAlive() {
	a := j.r.a
	if !time.Now().Before(j.ackDeadline()) {
		return
	}
	connected := a.nc.IsConnected()
	if err := j.msg.InProgress(); err == nil && connected {
		j.touched.Store(a.stamp(time.Now()))
	}
}

// ackDeadline is until when the job's delivery is surely still this
// agent's in the server's eyes: its ack wait from touched, less a tenth
// for the clocks.
func (j *job) ackDeadline() time.Time {
	ackWait := j.r.a.cfg.Queue.AckWait
	return j.r.a.at(j.touched.Load()).Add(ackWait - ackWait/claimMargin)
}

// A startVerdict is what a held job about to start on its worker does.
type startVerdict int

const (
	startRun      startVerdict = iota
	startHandBack              // hand back now, in its session's order, uncharged (nak)
	startLeave                 // leave unrun, without a nak, for the server to redeliver
)

// startVerdict decides, just before a held job's call, whether the job may
// still run here. Its delivery is this agent's only while the server's ack
// wait has not run out and, for a session partition, while this agent's
// claim on the partition holds; the fetch loop checks the claim before it
// pulls, but a held job waits for its worker afterwards, while the agent
// may be cut off from NATS or paused (SIGSTOP, a stalled VM) past both.
//
//   - While the agent cannot reach NATS, the job waits for the connection:
//     run now, it could neither have its result stored nor its message kept
//     alive. Back in time, it is marked in progress and runs.
//   - Once the ack wait (less a tenth, for the clocks) has run out, the
//     server delivers the job again, maybe to another agent: it is left
//     unrun, without a nak (a nak of a delivery already given out again
//     would send the job out a third time). So are the session's later
//     jobs held behind it, which must not overtake its redelivery.
//   - Within the ack wait but past the claim (the partition may have a new
//     owner that runs the session's later jobs), it is handed back at once,
//     in order and uncharged, as a drain does, so that the owner gets it
//     next; so are the session's later jobs held behind it, even if the
//     claim is back by their turn.
//
// A job on its last delivery is never delivered again, so it cannot run
// twice: it runs (its result is stored once NATS is back).
func (j *job) startVerdict() startVerdict {
	a := j.r.a
	if j.lastDelivery() {
		return startRun
	}
	if j.behind() && j.prev.leftUnrun.Load() {
		return j.leave("an earlier job of its session was left unrun")
	}
	if j.behind() && j.prev.handedBack.Load() {
		// Its session's earlier job went back: this one must not run
		// before that one's redelivery, even if the claim is back.
		return j.sendBack()
	}
	deadline := j.ackDeadline()
	if !a.nc.IsConnected() {
		t := time.NewTicker(outagePoll)
		defer t.Stop()
		for !a.nc.IsConnected() && time.Now().Before(deadline) {
			select {
			case <-t.C:
			case <-j.r.waitCtx.Done():
				return j.leave("the lane drained while NATS was unreachable")
			}
		}
		if a.nc.IsConnected() && time.Now().Before(deadline) {
			j.keepAlive()
		}
	}
	if !time.Now().Before(deadline) {
		return j.leave("its ack wait ran out before it could start (NATS unreachable, or the agent paused)")
	}
	if _, owned := j.r.pullDeadline(); !owned {
		j.logger().Info("claim on the partition lapsed before the job could start; handed back", zap.Int("partition", j.r.partition))
		return j.sendBack()
	}
	return startRun
}

// behind reports whether j is a later job of its session than prev, the
// session's job dispatched before it: not a redelivery of prev itself (or
// of an earlier job), which arrives while prev's goroutine still records
// its end and must not inherit prev's fate, or every redelivery of a job
// handed back would be handed back again, up to MaxDeliver.
func (j *job) behind() bool {
	return j.prev != nil && j.meta != nil && j.prev.meta != nil &&
		j.meta.Sequence.Stream > j.prev.meta.Sequence.Stream
}

// sendBack marks the job handed back for its session's later jobs and
// returns startHandBack. The claim is gone already, so the free record need
// not be written before the next owner reads it, and an agent cut off from
// NATS would only wait for it: the write gets lapsedFreeWait.
func (j *job) sendBack() startVerdict {
	j.handedBack.Store(true)
	j.freeWait = lapsedFreeWait
	return startHandBack
}

// leave counts and logs a job left unrun, and returns startLeave.
func (j *job) leave(why string) startVerdict {
	a := j.r.a
	j.leftUnrun.Store(true)
	a.counters.leftUnrun.Add(1)
	a.record(outcomeRequeued, 0)
	j.logger().Info("job left unrun for redelivery: "+why, zap.Duration("ack_wait", a.cfg.Queue.AckWait))
	return startLeave
}

// leftFree records the delivery of a job left unrun as free, as a drain's
// hand-back is, so that it is not charged against max_attempts: at once in
// the lane, which is likely to get the redelivery (NATS was away, so the
// record in the poison bucket may be written only after the redelivery is
// read), and in the bucket for any other agent. The latter may wait for
// NATS (up to storeTimeout).
func (j *job) leftFree() {
	if j.job == nil || j.meta == nil {
		return
	}
	j.r.a.leftFree.put(j.freeKey(), freeRecord{Free: j.free + 1, Delivery: j.meta.NumDelivered})
	j.recordFree()
}

// maxLeftFree bounds a lane's leftFreeSet, which starts over when full.
const maxLeftFree = 4096

// leftFreeSet is the free-delivery records of jobs a lane left unrun, by
// free key, until a redelivery takes them (take).
type leftFreeSet struct {
	mu sync.Mutex
	m  map[string]freeRecord
}

func (s *leftFreeSet) put(key string, rec freeRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]freeRecord)
	}
	if len(s.m) >= maxLeftFree {
		// Records whose redeliveries went to other agents are never
		// taken; they are hints, so the set starts over.
		clear(s.m)
	}
	s.m[key] = rec
}

// take removes and returns the record under key.
func (s *leftFreeSet) take(key string) (freeRecord, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec, ok := s.m[key]
	delete(s.m, key)
	return rec, ok
}
