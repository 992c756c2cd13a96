package agent

import (
	"time"

	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// outcomeExpired: delivered, or reached the front of its line, after its
// deadline (expires_at or ttl_ms); it never reached a worker.
const outcomeExpired = "expired"

// adoptFiringID names a job that a periodic schedule fired and that carries
// no id of its own "<schedule>-<unix seconds of the firing>" (see
// queue.Config.FiringID), so that every firing has its own result and a
// redelivered firing keeps its id.
func (j *job) adoptFiringID() {
	if j.job == nil || j.meta == nil || j.job.ID != queue.SeqID(j.meta.Sequence.Stream) {
		return
	}
	if id, ok := j.r.a.cfg.Queue.FiringID(j.msg.Headers(), j.meta.Timestamp); ok {
		j.job.ID = id
	}
}

// expire ends a job whose deadline has passed, before it touches a worker:
// an "expired" result, stored once, then the ack (no retry, no dead letter:
// running it later could not help). lease, if not nil, is a worker the job
// was handed and gives back untouched. It reports whether the job expired.
func (j *job) expire(lease *pool.Lease) bool {
	if j.job == nil || j.meta == nil {
		return false
	}
	now := time.Now()
	msg, expired := j.job.Expired(j.meta.Timestamp, now)
	if !expired {
		return false
	}
	if lease != nil {
		lease.Release()
	} else if j.ticket != nil {
		j.ticket.Cancel()
	}
	j.r.a.record(outcomeExpired, 0)
	j.logger().Info("job expired before it could start; not run", zap.String("why", msg))
	j.finish(&queue.Result{OK: false, Error: &queue.ErrorInfo{Kind: queue.KindExpired, Message: msg}}, now)
	return true
}
