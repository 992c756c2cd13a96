package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Free deliveries.
//
// A job's attempt is its consumer's delivery count, less the deliveries
// that ended without the job reaching a worker through no fault of its own:
// a drain (a graceful stop, or a partition handed over) hands back the jobs
// it held but had not started. Those are "free": they are not charged
// against max_attempts, so that a job with max_attempts 1 is not
// dead-lettered unrun because a scale-up or a rolling restart drained it.
//
// A checkout that finds its worker dead or broken before the job was sent
// to it is charged still: such a nak comes with a delay that lets the
// session's later jobs overtake the job, and a result's attempt 1 is what
// tells a reader (the reliability corpus, the chaos report) that a job ran
// on its first delivery, in its session's order.
//
// The count lives in the poison bucket (queue.PoisonTTL), under
// "free.<stream>.<sequence>" (the poison guard's keys are
// "<stream>.<sequence>" and are only ever read by exact key), written just
// after such a nak (see handBack) and read only on a redelivery. A job's key is deleted
// when the job ends; a key left behind (an agent killed meanwhile) expires
// with the bucket's TTL. When the count cannot be read, the attempt is the
// delivery count, as if nothing were free.
//
// The consumer's MaxDeliver stays a hard stop: the server delivers a job no
// more than that many times, whatever is free, so the agent ends a job on
// its last delivery (exhausted) instead of naking it.

// freeRecord is the value of a job's free-delivery key.
type freeRecord struct {
	// Free counts the deliveries handed back unrun.
	Free int `json:"free"`
	// Delivery is the last of them (its NumDelivered): a record from a
	// later delivery than the current one was written before the consumer
	// counted deliveries anew (a recreated consumer) and is ignored.
	Delivery uint64 `json:"delivery"`
}

// freeReadTimeout bounds the read of a redelivered job's free count, done
// in the fetch loop (so that the attempt is known when the job takes its
// place in line).
const freeReadTimeout = 2 * time.Second

func (j *job) freeKey() string { return "free." + j.poisonKey() }

// loadFree sets the attempt of a redelivered job to its deliveries less the
// free ones.
func (j *job) loadFree() {
	a := j.r.a
	if j.meta == nil || j.meta.NumDelivered < 2 {
		return
	}
	if rec, ok := a.leftFree.take(j.freeKey()); ok && rec.Free > 0 && rec.Delivery < j.meta.NumDelivered &&
		uint64(rec.Free) < j.meta.NumDelivered {
		// Left unrun by this lane (outage.go): known here at once.
		j.free = rec.Free
		j.attempt = int(j.meta.NumDelivered) - rec.Free
	}
	if a.deaths == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), freeReadTimeout)
	defer cancel()
	e, err := a.deaths.Get(ctx, j.freeKey())
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return
	}
	if err != nil {
		j.logger().Warn("cannot read the job's free deliveries; every delivery counts as an attempt", zap.Error(err))
		return
	}
	var rec freeRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Free <= j.free ||
		rec.Delivery >= j.meta.NumDelivered || uint64(rec.Free) >= j.meta.NumDelivered {
		return
	}
	j.free = rec.Free
	j.attempt = int(j.meta.NumDelivered) - rec.Free
}

// lastDelivery reports whether the server will not deliver the job again
// (its consumer's MaxDeliver).
func (j *job) lastDelivery() bool {
	md := j.r.a.topo.Config.MaxDeliver
	return j.meta != nil && md > 0 && j.meta.NumDelivered >= uint64(md)
}

// handBack naks a job that has not reached a worker through no fault of
// its own (a drain), at once, and counts this delivery as free. On the
// job's last delivery it ends the job as exhausted instead (a nak would
// leave it in the stream with nothing to deliver it), and reports false.
//
// The nak comes first, so that the job is back in the stream as early as
// it can be; the session's next held job is handed back only after this
// one has ended, count written (handBackInOrder). The count is written
// before the drain ends, so before the partition's lease goes to the next
// owner; a redelivery read before it is written (a lease lost meanwhile) is
// charged, as before.
func (j *job) handBack() bool {
	if j.job != nil && j.meta != nil && j.lastDelivery() {
		how := "handed back unrun"
		if j.wasCut() {
			how = "its run cut short by a drain"
		}
		j.exhaust(fmt.Sprintf("delivered %d times, the consumer's MaxDeliver, and %s on the last (%d earlier deliveries charged as attempts)",
			j.meta.NumDelivered, how, j.attempt-1))
		return false
	}
	_ = j.msg.Nak()
	if j.job != nil && j.meta != nil {
		j.recordFree()
	}
	return true
}

// handBackInOrder hands the job back once the earlier held jobs of its
// session have ended (handed back too, or run by the worker they wait for):
// the server redelivers naked messages in the order of their naks, so the
// next owner then gets the session's jobs in their order. Naked at once by
// their own goroutines, a drain's held jobs came back in any order.
func (j *job) handBackInOrder() bool {
	if j.prev != nil {
		<-j.prev.settled
	}
	return j.handBack()
}

// recordFree adds this delivery to the job's free count. On failure the
// delivery is charged, as it was before free deliveries existed.
func (j *job) recordFree() {
	a := j.r.a
	if a.deaths == nil || a.killed.Load() {
		// Killed (a simulated crash): a crash writes nothing.
		return
	}
	wait := storeTimeout
	if j.freeWait > 0 {
		wait = j.freeWait
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), wait)
	defer cancel()
	key := j.freeKey()
	for try := 0; ; try++ {
		var rec freeRecord
		var rev uint64
		e, err := a.deaths.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			j.logger().Warn("cannot record a free delivery; it counts as an attempt", zap.Error(err))
			return
		default:
			rev = e.Revision()
			if json.Unmarshal(e.Value(), &rec) != nil || rec.Delivery > j.meta.NumDelivered {
				// Unreadable, or from before the consumer counted anew.
				rec = freeRecord{}
			}
		}
		if rec.Delivery == j.meta.NumDelivered {
			return // recorded already
		}
		rec.Free++
		rec.Delivery = j.meta.NumDelivered
		data, _ := json.Marshal(rec)
		if rev == 0 {
			_, err = a.deaths.Create(ctx, key, data)
		} else {
			_, err = a.deaths.Update(ctx, key, data, rev)
		}
		if err == nil {
			return
		}
		if try >= 3 || !(errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence")) {
			j.logger().Warn("cannot record a free delivery; it counts as an attempt", zap.Error(err))
			return
		}
	}
}

// forgetFree deletes the job's free count once the job has ended, if it
// has one (only then: nothing is written for jobs never handed back).
func (j *job) forgetFree() {
	a := j.r.a
	if j.free == 0 || a.deaths == nil || j.meta == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), storeTimeout)
	defer cancel()
	if err := a.deaths.Purge(ctx, j.freeKey()); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		j.logger().Debug("cannot delete the job's free-delivery count; it expires with the bucket", zap.Error(err),
			zap.String("key", j.freeKey()), zap.String("seq", strconv.FormatUint(j.meta.Sequence.Stream, 10)))
	}
}
