package pool

import (
	"errors"
	"strconv"
	"strings"
)

// ErrInvalidConfig is wrapped by the error New returns for a bad Config; it
// names the field.
var ErrInvalidConfig = errors.New("pool: invalid config")

// Reasons a checkout fails. Every error from Reserve, Ticket.Wait, Checkout
// and the checkout step of Do is a *CheckoutError whose Reason is one of
// these; it matches ErrCheckout and its Reason with errors.Is.
var (
	// ErrCheckout is matched by every *CheckoutError.
	ErrCheckout = errors.New("pool: checkout failed")
	// ErrWorkerDead: validation found the process dead or its pipes closed,
	// or the session's bound worker died since its last job. The worker has
	// been removed and is being replaced; the job never ran.
	ErrWorkerDead = errors.New("pool: worker is dead")
	// ErrWorkerBroken: validation failed for another reason (a protocol
	// error). The worker has been removed and is being replaced.
	ErrWorkerBroken = errors.New("pool: worker is broken")
	// ErrSessionLost: a RequireSession checkout whose bound worker is gone,
	// with the session's state.
	ErrSessionLost = errors.New("pool: session lost")
	// ErrPoolSaturated: MaxWaiters checkouts are already waiting.
	ErrPoolSaturated = errors.New("pool: too many waiting checkouts")
	// ErrTooManySessions: a new session while MaxSessions are live.
	ErrTooManySessions = errors.New("pool: too many sessions")
	// ErrPoolStopped: the pool is not running (not started, stopping or
	// stopped).
	ErrPoolStopped = errors.New("pool: stopped")
	// ErrCheckoutTimeout: the context ended (or the ticket was canceled)
	// while waiting; Err holds the context's error.
	ErrCheckoutTimeout = errors.New("pool: checkout canceled or timed out")
)

// ErrLeaseReleased is returned by Lease.Call on a lease already released:
// its worker may belong to someone else by now.
var ErrLeaseReleased = errors.New("pool: lease already released")

var (
	errRemovedByHolder = errors.New("pool: removed by the lease holder")
	errNotStarted      = errors.New("pool: not started")
	errTicketUsed      = errors.New("pool: ticket already waited for or canceled")
)

// CheckoutError is the error of a failed checkout. The agent answers it by
// naking the job: the job did not run.
type CheckoutError struct {
	Reason   error  // one of the Err* sentinels above
	WorkerID string // the worker concerned, if any
	PID      int
	Session  string // the requested session, if any
	Err      error  // the cause: a *worker.Error, a context error, ...; may be nil
}

func (e *CheckoutError) Error() string {
	var b strings.Builder
	b.WriteString("pool: checkout failed")
	if e.Reason != nil && e.Reason != ErrCheckout {
		b.WriteString(": ")
		b.WriteString(strings.TrimPrefix(e.Reason.Error(), "pool: "))
	}
	if e.WorkerID != "" {
		b.WriteString(" (worker ")
		b.WriteString(e.WorkerID)
		if e.PID > 0 {
			b.WriteString(" pid ")
			b.WriteString(strconv.Itoa(e.PID))
		}
		b.WriteString(")")
	}
	if e.Session != "" {
		b.WriteString(" session ")
		b.WriteString(e.Session)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Is matches ErrCheckout and e's Reason.
func (e *CheckoutError) Is(target error) bool {
	return target == ErrCheckout || (e.Reason != nil && target == e.Reason)
}

// Unwrap returns the cause, so that errors.Is(err, context.DeadlineExceeded)
// and errors.As(err, &workerErr) see through.
func (e *CheckoutError) Unwrap() error { return e.Err }
