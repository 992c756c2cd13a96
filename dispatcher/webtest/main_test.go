// Package webtest drives the dispatcher's dashboard in a real Chromium
// against a running fleet (embedded NATS server, agents with helper
// workers, dispatcher.Serve with HTTP and tokens).
package webtest

import (
	"testing"

	"github.com/procfleet/procfleet/internal/sharedtest"
)

// TestMain routes helper-worker children and checks for leaked goroutines.
func TestMain(m *testing.M) { sharedtest.TestMain(m) }
