package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// The poison guard.
//
// A job whose attempts keep killing workers (a crash mid-call, a protocol
// error, a kill at the timeout) would otherwise cost one worker, and every
// session bound to it, per attempt, up to max_attempts. Workers killed from
// outside (see deathKind) are not held against the job. The guard counts
// those deaths per job and ends the job once Config.PoisonDeaths workers
// died running it: a dead letter and a result of kind "poison" naming each
// death, then Term. A job whose last allowed attempt (max_attempts) is also
// the one that reaches the bound ends "exhausted", as before: the guard
// only cuts short what max_attempts would let run on.
//
// The count lives in the poison KV bucket (queue.PoisonTTL), keyed by the
// job's stream and stream sequence, which stay the same on every
// redelivery, whichever agent takes it. A key is written only when a worker
// dies, so nothing is written for healthy jobs; keys expire with the
// bucket's TTL. A job replayed from the dead-letter stream is a new message
// with a new sequence, so it starts from zero.

// workerDeath is one worker lost while running a job.
type workerDeath struct {
	Attempt int `json:"attempt"`
	// Delivery is the consumer's delivery count: unlike the attempt (which
	// leaves free deliveries out, see free.go), it never repeats.
	Delivery uint64    `json:"delivery,omitempty"`
	Agent    string    `json:"agent"`
	Worker   string    `json:"worker"`
	PID      int       `json:"pid,omitempty"`
	Kind     string    `json:"kind"` // crash, protocol or timeout
	Cause    string    `json:"cause"`
	At       time.Time `json:"at"`
}

// deathRecord is the value of a key in the poison bucket.
type deathRecord struct {
	Deaths []workerDeath `json:"deaths"`
}

// maxCauseLen bounds each cause kept, so that a record stays small.
const maxCauseLen = 300

// deathKind says how a failed call cost its worker through the job:
// "crash" (the process exited, or died of a fault signal such as SIGSEGV or
// SIGABRT), "protocol" (it broke the protocol and was removed) or "timeout"
// (killed at the job's timeout). It returns "" when the job is not to blame:
// a canceled call (the agent stopping, the job canceled), or a worker ended
// by a signal sent from outside (SIGKILL, SIGTERM, SIGINT, SIGHUP: an
// operator, a chaos test, the kernel's OOM killer).
func deathKind(err error) string {
	switch {
	case errors.Is(err, worker.ErrUnread):
		// The worker died before it read the call: the job never
		// reached it.
		return ""
	case errors.Is(err, worker.ErrStdoutClosed):
		// Killed by the worker package because it closed its stdout: a
		// protocol breach, not an outside kill.
		return "protocol"
	case errors.Is(err, worker.ErrDead):
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				switch ws.Signal() {
				case syscall.SIGKILL, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP:
					return ""
				}
			}
		}
		return "crash"
	case errors.Is(err, worker.ErrProtocol):
		return "protocol"
	case errors.Is(err, worker.ErrTimeout):
		return "timeout"
	}
	return ""
}

// poisonKey is the job's key in the poison bucket: "<stream>.<sequence>".
func (j *job) poisonKey() string {
	return j.meta.Stream + "." + strconv.FormatUint(j.meta.Sequence.Stream, 10)
}

// poisoned records a worker lost to the job's failed call and, once the
// poison bound is reached, ends the job as poison and reports true. When the
// death cannot be recorded the job is retried as before (max_attempts still
// bounds it).
func (j *job) poisoned(lease *pool.Lease, err error) bool {
	a := j.r.a
	kind := deathKind(err)
	if kind == "" || a.baseCtx.Err() != nil || j.meta == nil || a.deaths == nil {
		return false
	}
	cause := err.Error()
	if len(cause) > maxCauseLen {
		cause = cause[:maxCauseLen] + "..."
	}
	d := workerDeath{
		Attempt: j.attempt, Delivery: j.meta.NumDelivered, Agent: a.cfg.Name, Worker: lease.WorkerID(), PID: lease.PID(),
		Kind: kind, Cause: cause, At: time.Now().UTC(),
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.baseCtx), storeTimeout)
	defer cancel()
	deaths, rerr := recordDeath(ctx, a.deaths, j.poisonKey(), d)
	if rerr != nil {
		j.logger().Warn("poison guard: cannot record the worker death; max_attempts still bounds the job", zap.Error(rerr))
		return false
	}
	a.metrics.workerDeaths.Inc()
	if len(deaths) < a.cfg.PoisonDeaths || j.attempt >= j.maxAttempts() {
		// Below the bound, or the last attempt anyway: retry ends it as
		// exhausted, as max_attempts says.
		return false
	}
	j.poison(deaths)
	return true
}

// recordDeath adds d to the record under key, once per attempt, and returns
// all deaths recorded for the job. Concurrent writers (there should be none:
// one delivery at a time) are resolved by revision.
func recordDeath(ctx context.Context, kv jetstream.KeyValue, key string, d workerDeath) ([]workerDeath, error) {
	for try := 0; ; try++ {
		var rec deathRecord
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return nil, err
		default:
			rev = e.Revision()
			if err := json.Unmarshal(e.Value(), &rec); err != nil {
				// Unreadable (not ours): start over rather than block the guard.
				rec = deathRecord{}
			}
		}
		for _, old := range rec.Deaths {
			same := old.Attempt == d.Attempt
			if old.Delivery != 0 && d.Delivery != 0 {
				same = old.Delivery == d.Delivery
			}
			if same {
				return rec.Deaths, nil // this delivery was recorded already
			}
		}
		rec.Deaths = append(rec.Deaths, d)
		data, err := json.Marshal(rec)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			_, err = kv.Create(ctx, key, data)
		} else {
			_, err = kv.Update(ctx, key, data, rev)
		}
		if err == nil {
			return rec.Deaths, nil
		}
		if try >= 3 || !(errors.Is(err, jetstream.ErrKeyExists) || strings.Contains(err.Error(), "wrong last sequence")) {
			return nil, err
		}
	}
}

// poison ends a job that killed a.cfg.PoisonDeaths workers: dead letter,
// then a "poison" result, then Term (as exhaust does).
func (j *job) poison(deaths []workerDeath) {
	j.publishEvent() // the attempt's end before its verdict
	a := j.r.a
	why := poisonReason(deaths, a.cfg.PoisonDeaths)
	a.record(outcomePoison, 0)
	j.logger().Warn("poison job: it keeps killing workers; dead-lettered", zap.String("why", why))
	if !j.deadLetter(queue.KindPoison, why) {
		return
	}
	if j.store(&queue.Result{OK: false, Error: &queue.ErrorInfo{Kind: queue.KindPoison, Message: why}}, time.Now()) {
		_ = j.msg.Term()
	}
}

// poisonReason names every death, e.g. "2 workers died running this job
// (poison bound 2): attempt 1 on agent a1: timeout: worker a1-3 (pid 42):
// call timed out: ...; attempt 2 ...".
func poisonReason(deaths []workerDeath, bound int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d workers died running this job (poison bound %d)", len(deaths), bound)
	for i, d := range deaths {
		sep := "; "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(&b, "%sattempt %d on agent %s: %s: %s", sep, d.Attempt, d.Agent, d.Kind, d.Cause)
	}
	return b.String()
}
