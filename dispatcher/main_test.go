package dispatcher_test

import (
	"testing"

	"github.com/procfleet/procfleet/internal/sharedtest"
)

// TestMain routes helper-worker children (the HTTP tests run a real fleet)
// and checks for leaked goroutines.
func TestMain(m *testing.M) { sharedtest.TestMain(m) }
