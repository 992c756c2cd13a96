package testworker

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain is the TestMain of every package whose tests start helper
// workers: in a child started by Command it runs the worker (and never
// returns); otherwise it runs the tests and checks that none of them left a
// goroutine behind.
func TestMain(m *testing.M) {
	if IsHelper() {
		Main()
		return
	}
	goleak.VerifyTestMain(m)
}
