package dispatcher_test

import (
	"testing"

	"github.com/procfleet/procfleet/fleettest/testworker"
)

func TestMain(m *testing.M) { testworker.TestMain(m) }
