// Package pool is an agent's local pool of subprocess workers (package
// worker): it hands workers out under the checkout contract, keeps each
// session on one worker, and starts, checks, recycles and replaces workers.
//
// Checkout contract. Reserve takes a place in line synchronously; Wait (or
// Checkout, which is both) returns a validated *Lease or a *CheckoutError,
// never an untyped error and never a hang past ctx. A worker that fails
// validation is removed (killed, replacement started) and the checkout says
// so (ErrWorkerDead, ErrWorkerBroken), so that the agent naks the job. Lease.Call
// returns the worker's own error; after a worker-level error Release removes
// and replaces the worker, so a bad worker is never reused.
//
// Lines. Anonymous jobs and the first job of an unbound session wait in one
// FIFO line and take any idle worker, preferring those with fewest
// sessions. A bound session's jobs wait in the session's own FIFO line, one
// job at a time, for their worker. A worker that frees up is handed directly
// to the oldest eligible waiter: no polling, no goroutine per checkout.
//
// Sessions. A session is bound by its first job (NewSession). If its worker
// dies or is removed, the next checkout of the session reports ErrWorkerDead
// once (ErrSessionLost with RequireSession, which keeps failing until a
// plain checkout rebinds the session); then it binds afresh. A session idle
// for SessionIdleTTL expires and its worker gets session_end, as with
// EndSession.
//
// Lifecycle. Size slots each hold one worker (starting → idle ⇄ busy →
// stopping). At most StartConcurrency workers start at once; failed starts
// back off exponentially with jitter and mark the pool Degraded after
// DegradedAfter in a row. A worker that dies or breaks before it has
// answered anything, within two seconds of its start, counts as a failed
// start too; while starts are failing, a new worker answers a ping before
// it gets a job. One supervisor goroutine pings idle workers,
// expires sessions, applies TTL and IdleTTL and schedules restarts. Soft
// limits (MaxJobs, TTL, IdleTTL) retire a worker once it holds no session
// (meanwhile it serves its sessions and anonymous jobs, and takes no new
// session); MaxRSS removes it at once. Stop drains leases and stops every
// worker; Kill kills them; either leaves no process and no goroutine
// behind.
//
// Files, one concept each: pool.go (New, Start, Stop, Kill), checkout.go
// (Reserve, Wait, the lines), lease.go (what a holder does with a worker),
// checkin.go (the one path every lease ends on), sessions.go (binding and
// routing a session's jobs), lifecycle.go (slots: start, restart, retire,
// remove), health.go (pings, session_end, the memory limit),
// supervisor.go (the timer loop), list.go (the intrusive lists), stats.go.
package pool
