package cli_test

import (
	"testing"

	"github.com/procfleet/procfleet/internal/sharedtest"
)

func TestMain(m *testing.M) {
	sharedtest.VerifyTestMain(m)
}
