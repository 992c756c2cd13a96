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
// left a goroutine behind.
func TestMain(m *testing.M, opts ...goleak.Option) {
	if testworker.IsHelper() {
		testworker.Main()
		return
	}
	goleak.VerifyTestMain(m, opts...)
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
