package pool_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

// TestSessionAffinity submits every job at once but reserves each session's
// jobs in order: every session must stay on one worker and see its jobs in
// FIFO order, one at a time.
func TestSessionAffinity(t *testing.T) {
	t.Parallel()
	const sessions, jobs = 100, 10
	cfg := config(t)
	cfg.Size = 4
	p := startPool(t, cfg)
	ctx := testCtx(t)

	type outcome struct {
		reply sessionReply
		info  pool.CallInfo
		err   error
	}
	results := make([][]outcome, sessions)
	var wg sync.WaitGroup
	for s := range sessions {
		results[s] = make([]outcome, jobs)
		wg.Go(func() {
			id := fmt.Sprintf("s%03d", s)
			for j := range jobs {
				tk, err := p.Reserve(pool.Request{Session: id})
				if err != nil {
					results[s][j].err = err
					continue
				}
				wg.Go(func() {
					o := &results[s][j]
					l, err := tk.Wait(ctx)
					if err != nil {
						o.err = err
						return
					}
					defer l.Release()
					res, err := l.Call(ctx, &worker.Call{Command: "session", Payload: json.RawMessage(fmt.Sprint(j))})
					if err == nil {
						err = json.Unmarshal(res.Value, &o.reply)
					}
					o.err = err
					o.info = pool.CallInfo{PID: l.PID(), NewSession: l.NewSession()}
				})
			}
		})
	}
	wg.Wait()

	used := map[int]int{}
	for s := range sessions {
		pid := results[s][0].reply.PID
		for j, o := range results[s] {
			if o.err != nil {
				t.Fatalf("session %d job %d: %v", s, j, o.err)
			}
			r := o.reply
			if r.PID != pid || o.info.PID != pid {
				t.Fatalf("session %d job %d ran on %d, earlier jobs on %d", s, j, r.PID, pid)
			}
			if r.Seq != j || r.Count != j+1 {
				t.Fatalf("session %d job %d: seq %d count %d (out of order)", s, j, r.Seq, r.Count)
			}
			if r.NewSession != (j == 0) || o.info.NewSession != (j == 0) {
				t.Fatalf("session %d job %d: new_session %v", s, j, r.NewSession)
			}
		}
		used[pid]++
	}
	if len(used) < 2 {
		t.Fatalf("sessions not spread: %v", used)
	}
	st := p.Stats()
	if st.Sessions != sessions || st.Checkouts != sessions*jobs || st.Removed != 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("sessions per worker: %v; wait max %v", used, st.WaitMax)
}

func TestBoundWorkerKilled(t *testing.T) {
	t.Parallel()
	for _, monitor := range []bool{false, true} {
		t.Run(fmt.Sprintf("monitor=%v", monitor), func(t *testing.T) {
			t.Parallel()
			cfg := config(t)
			cfg.Size = 2
			cfg.HealthInterval = -1
			if monitor {
				// The health loop notices first; the checkout must still
				// report the loss exactly once.
				cfg.HealthInterval = 20 * time.Millisecond
			}
			p := startPool(t, cfg)
			ctx := testCtx(t)
			s := pool.Request{Session: "s1"}

			first := mustDo(t, p, s, "session", 0)
			if !first.NewSession || first.Count != 1 {
				t.Fatalf("first %+v", first)
			}
			pid := killCheckedOut(t, p, s)
			if pid != first.PID {
				t.Fatalf("session moved from %d to %d", first.PID, pid)
			}
			if monitor {
				waitFor(t, "the health check to remove the worker", func() bool { return p.Stats().Removed == 1 })
			}
			_, _, err := do(ctx, p, s, "session", 1)
			ce := wantCheckoutErr(t, err, pool.ErrWorkerDead)
			if ce.PID != pid || ce.Session != "s1" {
				t.Fatalf("error %+v", ce)
			}
			r := mustDo(t, p, s, "session", 2)
			if r.PID == pid || !r.NewSession || r.Count != 1 {
				t.Fatalf("after rebinding: %+v", r)
			}
			if r2 := mustDo(t, p, s, "session", 3); r2.PID != r.PID || r2.NewSession || r2.Count != 2 {
				t.Fatalf("second job after rebinding: %+v", r2)
			}
		})
	}
}

func TestRequireSessionLost(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.HealthInterval = -1
	p := startPool(t, cfg)
	ctx := testCtx(t)
	req := pool.Request{Session: "s1", RequireSession: true}

	// A fresh session binds even when required.
	first := mustDo(t, p, req, "session", 0)
	if !first.NewSession {
		t.Fatalf("first %+v", first)
	}
	killCheckedOut(t, p, req)
	for range 2 {
		_, _, err := do(ctx, p, req, "session", 1)
		wantCheckoutErr(t, err, pool.ErrSessionLost)
	}
	// A plain checkout rebinds; required ones then work again.
	if r := mustDo(t, p, pool.Request{Session: "s1"}, "session", 2); !r.NewSession || r.PID == first.PID {
		t.Fatalf("rebind %+v", r)
	}
	if r := mustDo(t, p, req, "session", 3); r.NewSession || r.Count != 2 {
		t.Fatalf("after rebind %+v", r)
	}

	// A call that kills the worker has told its caller: a later plain
	// checkout rebinds at once, a required one is refused.
	_, _, err := p.Do(ctx, req, &worker.Call{Command: "crash"})
	if err == nil {
		t.Fatal("crash succeeded")
	}
	_, _, err = do(ctx, p, req, "session", 4)
	wantCheckoutErr(t, err, pool.ErrSessionLost)
	// EndSession forgets the loss.
	p.EndSession("s1")
	if r := mustDo(t, p, req, "session", 5); !r.NewSession || r.Count != 1 {
		t.Fatalf("after EndSession %+v", r)
	}
}

func TestSessionQueuedJobsSurviveWorkerCrash(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.Size = 2
	p := startPool(t, cfg)
	ctx := testCtx(t)
	s := pool.Request{Session: "s"}

	first := mustDo(t, p, s, "session", 0)
	held, err := p.Checkout(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	// Queued behind the held job, waiting for the same worker.
	var tickets []*pool.Ticket
	for range 2 {
		tk, err := p.Reserve(s)
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	if _, err := held.Call(ctx, &worker.Call{Command: "crash"}); err == nil {
		t.Fatal("crash succeeded")
	}
	held.Release()
	// The holder saw the crash, so the queued jobs rebind without an error.
	for i, tk := range tickets {
		l, err := tk.Wait(ctx)
		if err != nil {
			t.Fatalf("ticket %d: %v", i, err)
		}
		res, err := l.Call(ctx, &worker.Call{Command: "session", Payload: json.RawMessage(fmt.Sprint(i))})
		l.Release()
		var r sessionReply
		if err == nil {
			err = json.Unmarshal(res.Value, &r)
		}
		if err != nil {
			t.Fatal(err)
		}
		if l.PID() == first.PID || l.NewSession() != (i == 0) || r.Count != i+1 {
			t.Fatalf("ticket %d: pid %d new %v reply %+v", i, l.PID(), l.NewSession(), r)
		}
	}
}

func TestSessionIdleExpiry(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.SessionIdleTTL = 100 * time.Millisecond
	p := startPool(t, cfg)

	mustDo(t, p, pool.Request{Session: "s1"}, "session", 0)
	waitFor(t, "session expiry", func() bool { return p.Stats().Sessions == 0 })
	r := mustDo(t, p, pool.Request{}, "sessions", nil)
	if !slices.Contains(r.Ended, "s1") || slices.Contains(r.Live, "s1") {
		t.Fatalf("worker sessions %+v", r)
	}
	if r := mustDo(t, p, pool.Request{Session: "s1"}, "session", 1); !r.NewSession || r.Count != 1 {
		t.Fatalf("after expiry %+v", r)
	}
}

func TestEndSession(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx := testCtx(t)

	mustDo(t, p, pool.Request{Session: "s1"}, "session", 0)
	mustDo(t, p, pool.Request{Session: "s2"}, "session", 0)
	p.EndSession("s1")
	p.EndSession("unknown")
	r := mustDo(t, p, pool.Request{}, "sessions", nil)
	if !slices.Equal(r.Ended, []string{"s1"}) || !slices.Equal(r.Live, []string{"s2"}) {
		t.Fatalf("worker sessions %+v", r)
	}

	// Ending a session while its job runs: the job finishes, session_end
	// reaches the worker before the session's next job, which starts anew.
	l, err := p.Checkout(ctx, pool.Request{Session: "s2"})
	if err != nil {
		t.Fatal(err)
	}
	p.EndSession("s2")
	if _, err := l.Call(ctx, &worker.Call{Command: "session", Payload: json.RawMessage(`1`)}); err != nil {
		t.Fatal(err)
	}
	l.Release()
	if r := mustDo(t, p, pool.Request{Session: "s2"}, "session", 2); !r.NewSession || r.Count != 1 {
		t.Fatalf("after EndSession %+v", r)
	}
	if st := p.Stats(); st.Sessions != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTooManySessions(t *testing.T) {
	t.Parallel()
	cfg := config(t)
	cfg.MaxSessions = 2
	p := startPool(t, cfg)

	mustDo(t, p, pool.Request{Session: "a"}, "session", 0)
	mustDo(t, p, pool.Request{Session: "b"}, "session", 0)
	_, err := p.Reserve(pool.Request{Session: "c"})
	wantCheckoutErr(t, err, pool.ErrTooManySessions)
	mustDo(t, p, pool.Request{Session: "a"}, "session", 1) // existing sessions still work
	p.EndSession("a")
	mustDo(t, p, pool.Request{Session: "c"}, "session", 0)
}

// TestCheckoutCtxAlreadyDone: a checkout with a dead ctx fails without
// touching (and killing) a worker.
func TestCheckoutCtxAlreadyDone(t *testing.T) {
	t.Parallel()
	p := startPool(t, config(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Checkout(ctx, pool.Request{Session: "s"})
	wantCheckoutErr(t, err, pool.ErrCheckoutTimeout)
	if st := p.Stats(); st.Removed != 0 || st.Idle != 1 {
		t.Fatalf("stats %+v", st)
	}
}
