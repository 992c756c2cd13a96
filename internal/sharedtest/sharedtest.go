// Package sharedtest holds the low-level pieces that the tests of
// procfleet's own packages share, below fleettest: the TestMain that routes a
// helper-worker child to the Go test worker and checks for leaked
// goroutines, and the one way to wait for a condition without sleeping.
// Packages that fleettest depends on (worker, pool, queue, agent) use it
// from their tests, as river's riversharedtest serves its lower packages.
//
// It imports testing and goleak, so only test files may import it; a
// check in the dependency test keeps it out of the programs.
package sharedtest

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/procfleet/procfleet/fleettest/testworker"
)

// TestMain is the TestMain of every package whose tests start helper
// workers: in a child started by testworker.Command it runs the worker (and
// never returns); otherwise it runs the tests and checks that none of them
// left a goroutine behind (VerifyTestMain).
func TestMain(m *testing.M, opts ...goleak.Option) {
	if testworker.IsHelper() {
		testworker.Main()
		return
	}
	VerifyTestMain(m, opts...)
}

// leakSettle is how long VerifyTestMain lets goroutines that are still
// ending go before it calls them leaked.
const leakSettle = 10 * time.Second

// VerifyTestMain is goleak.VerifyTestMain with patience: after a successful
// run it waits up to leakSettle for the goroutines that the tests' cleanups
// told to stop (a closed connection's readers, a stopped server's loops, a
// worker's pipe copiers) to end, then checks as goleak does. goleak's own
// retries give up after about half a second, which a starved machine at
// the end of a package (CI runs the packages side by side) can exceed; a
// real leak is still there after leakSettle and fails the run. opts must
// not hold goleak.Cleanup (see Settled).
func VerifyTestMain(m *testing.M, opts ...goleak.Option) {
	goleak.VerifyTestMain(Settled(m, opts...), opts...)
}

// Settled returns m for goleak.VerifyTestMain, waiting as VerifyTestMain
// does after a successful run: for a TestMain that passes goleak.Cleanup
// to goleak.VerifyTestMain (and only the other options here).
func Settled(m *testing.M, opts ...goleak.Option) goleak.TestingM {
	return settling{m: m, opts: opts}
}

// settling runs the tests, then waits for the goroutines to settle.
type settling struct {
	m    *testing.M
	opts []goleak.Option
}

func (s settling) Run() int {
	code := s.m.Run()
	if code == 0 {
		// The verdict is goleak.VerifyTestMain's, right after.
		_ = Poll(leakSettle, 100*time.Millisecond, func() error { return goleak.Find(s.opts...) })
	}
	return code
}

// Eventually polls cond every 20ms until it returns nil or timeout passes,
// then fails the test with cond's last error.
func Eventually(t testing.TB, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Poll(timeout, 20*time.Millisecond, cond); err != nil {
		t.Fatalf("condition not met within %s: %v", timeout, err)
	}
}

// Poll calls cond every interval until it returns nil, and returns nil; or,
// once timeout has passed, cond's last error. It does not need a test, so a
// helper goroutine may use it and report the error its own way.
func Poll(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}
