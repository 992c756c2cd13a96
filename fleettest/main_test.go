package fleettest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/procfleet/procfleet/fleettest/testworker"
)

func TestMain(m *testing.M) {
	if testworker.IsHelper() {
		testworker.Main()
		return
	}
	goleak.VerifyTestMain(m)
}
