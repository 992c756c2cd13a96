package pool_test

import (
	"context"
	"testing"
	"time"

	"github.com/procfleet/procfleet/pool"
)

func TestRecycleMaxJobs(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.MaxJobs = 3
	p := startPool(t, cfg)

	pid := mustDo(t, p, pool.Request{}, "pid", nil).PID
	for range 2 {
		if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got != pid {
			t.Fatalf("recycled before MaxJobs: %d != %d", got, pid)
		}
	}
	if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got == pid {
		t.Fatal("not recycled after MaxJobs")
	}
	if st := p.Stats(); st.Recycled != 1 || st.Removed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRecycleMaxJobsWaitsForSession: a soft limit retires the worker only
// once its live session has ended (here by EndSession). Meanwhile the
// session keeps its worker, and the worker runs anonymous jobs too (they
// bind nothing to it): with no replacement until it retires, a pool of
// retiring workers would otherwise take no anonymous job for as long as a
// session lives (30 minutes idle by default).
func TestRecycleMaxJobsWaitsForSession(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.MaxJobs = 2
	p := startPool(t, cfg)
	s := pool.Request{Session: "s"}

	pid := mustDo(t, p, s, "session", 0).PID
	mustDo(t, p, s, "session", 1)
	if st := p.Stats(); !st.Workers[0].Retiring {
		t.Fatalf("stats %+v", st)
	}
	if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got != pid {
		t.Fatalf("anonymous job ran on pid %d, want the retiring worker %d that holds a session", got, pid)
	}
	if r := mustDo(t, p, s, "session", 2); r.PID != pid || r.Count != 3 {
		t.Fatalf("retiring worker dropped its session: %+v", r)
	}
	if st := p.Stats(); st.Recycled != 0 {
		t.Fatalf("stats %+v", st)
	}
	// With every worker retiring, a new session does not wait for the
	// old sessions to end (up to SessionIdleTTL): the retiring worker takes
	// it, and retires once all its sessions have ended.
	if r := mustDo(t, p, pool.Request{Session: "other"}, "session", 0); r.PID != pid || !r.NewSession {
		t.Fatalf("new session while the only worker is retiring: %+v, want it on that worker (pid %d)", r, pid)
	}
	p.EndSession("s")
	if st := p.Stats(); st.Recycled != 0 || st.Workers[0].Sessions != 1 {
		t.Fatalf("stats %+v: want the worker kept for its other session", st)
	}
	p.EndSession("other")
	waitFor(t, "the retiring worker retired", func() bool { return p.Stats().Recycled == 1 })
	if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got == pid {
		t.Fatal("the retired worker still runs jobs")
	}
}

// TestRetiringPoolTakesNewSessions: a pool whose workers all reached a soft
// limit while holding sessions still serves new sessions at once, and a
// new session prefers a worker that is not retiring.
func TestRetiringPoolTakesNewSessions(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.Size = 2
	cfg.MaxJobs = 1
	p := startPool(t, cfg)
	mustDo(t, p, pool.Request{Session: "A"}, "session", 1)
	mustDo(t, p, pool.Request{Session: "B"}, "session", 1)
	ctx, cancel := context.WithTimeout(testCtx(t), 10*time.Second)
	defer cancel()
	r, _, err := do(ctx, p, pool.Request{Session: "C"}, "session", 1)
	if err != nil {
		t.Fatalf("session C's first job with both workers retiring: %v (stats %+v)", err, p.Stats())
	}
	if !r.NewSession {
		t.Fatalf("session C: %+v", r)
	}
}

// TestRecycleIdleTTLSparesSessions: a worker that holds a session is not
// idle: IdleTTL does not retire it, and it takes anonymous jobs and new
// sessions as any worker does; once its session has ended, its idle time
// retires it.
func TestRecycleIdleTTLSparesSessions(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.IdleTTL = 100 * time.Millisecond
	cfg.SessionIdleTTL = time.Minute
	p := startPool(t, cfg)
	pid := mustDo(t, p, pool.Request{Session: "s"}, "session", 0).PID
	lastUse := time.Now()
	for _, req := range []pool.Request{{}, {Session: "other"}} {
		// Each request comes after the worker has been idle past IdleTTL.
		waitFor(t, "idle time", func() bool { return time.Since(lastUse) > 3*cfg.IdleTTL })
		if st := p.Stats(); st.Workers[0].Retiring || st.Recycled != 0 {
			t.Fatalf("a worker holding a session retired for idleness: %+v", st)
		}
		got := mustDo(t, p, req, "pid", nil).PID
		lastUse = time.Now()
		if got != pid {
			t.Fatalf("request %+v ran on pid %d, want the worker %d", req, got, pid)
		}
	}
	p.EndSession("s")
	p.EndSession("other")
	waitFor(t, "idle recycling after the sessions ended", func() bool { return p.Stats().Recycled >= 1 })
}

// TestRecycleTTL: TTL retires the worker; its session keeps it until the
// session expires.
func TestRecycleTTLWaitsForSessionExpiry(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.TTL = 200 * time.Millisecond
	cfg.SessionIdleTTL = 1500 * time.Millisecond
	p := startPool(t, cfg)
	s := pool.Request{Session: "s"}

	pid := mustDo(t, p, s, "session", 0).PID
	waitFor(t, "TTL", func() bool { return p.Stats().Workers[0].Retiring })
	if r := mustDo(t, p, s, "session", 1); r.PID != pid || r.Count != 2 {
		t.Fatalf("retiring worker dropped its session: %+v", r)
	}
	waitFor(t, "session expiry and recycling", func() bool {
		st := p.Stats()
		return st.Sessions == 0 && st.Recycled >= 1
	})
	if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got == pid {
		t.Fatal("not recycled after TTL")
	}
}

func TestRecycleIdleTTL(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.IdleTTL = 100 * time.Millisecond
	p := startPool(t, cfg)

	pid := mustDo(t, p, pool.Request{}, "pid", nil).PID
	waitFor(t, "idle recycling", func() bool { return p.Stats().Recycled >= 1 })
	if got := mustDo(t, p, pool.Request{}, "pid", nil).PID; got == pid {
		t.Fatal("not recycled after IdleTTL")
	}
	if st := p.Stats(); st.Removed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRecycleMaxRSS: the hard limit does not wait for the session, which is
// lost: its next checkout reports it once, then it starts anew.
func TestRecycleMaxRSS(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.MaxRSS = 200 << 20
	p := startPool(t, cfg)
	ctx := testCtx(t)
	s := pool.Request{Session: "s"}

	pid := mustDo(t, p, s, "session", 0).PID
	mustDo(t, p, s, "grow", map[string]int{"mb": 256})
	_, _, err := do(ctx, p, s, "session", 1)
	wantCheckoutErr(t, err, pool.ErrWorkerDead)
	r := mustDo(t, p, s, "session", 2)
	if r.PID == pid || !r.NewSession {
		t.Fatalf("after MaxRSS %+v", r)
	}
	waitFor(t, "the old worker to be gone", func() bool { return !pidAlive(pid) })
	if st := p.Stats(); st.Recycled != 1 || st.Removed != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestIdleTTLCountsFromSessionEnd: a worker's idle time for IdleTTL starts
// when its last session ends, not at its last job: it is recycled no
// sooner than IdleTTL after the session expired.
func TestIdleTTLCountsFromSessionEnd(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.IdleTTL = 2 * time.Second
	cfg.SessionIdleTTL = time.Second
	p := startPool(t, cfg)
	mustDo(t, p, pool.Request{Session: "s"}, "session", 0)
	waitFor(t, "the session to expire", func() bool { return p.Stats().Sessions == 0 })
	ended := time.Now()
	waitFor(t, "the idle worker recycled", func() bool { return p.Stats().Recycled == 1 })
	// ended is at most one poll late, so the wait is at least IdleTTL less
	// that poll.
	if waited := time.Since(ended); waited < cfg.IdleTTL-100*time.Millisecond {
		t.Fatalf("recycled %v after its session ended, want at least IdleTTL %v", waited, cfg.IdleTTL)
	}
}
