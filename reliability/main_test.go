package reliability_test

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/internal/sharedtest"
)

// envArmDir names a directory of one-shot start modes for helper workers:
// a worker that starts and manages to remove <dir>/start-<mode> starts in
// that mode (e.g. "garbage"); every later start is normal again. Removal
// is atomic, so exactly one worker takes each armed mode.
const envArmDir = "RELIABILITY_ARM_DIR"

func TestMain(m *testing.M) {
	if testworker.IsHelper() {
		if dir := os.Getenv(envArmDir); dir != "" {
			for _, mode := range []string{"garbage", "crash", "never_ready"} {
				if os.Remove(filepath.Join(dir, "start-"+mode)) == nil {
					os.Setenv(testworker.EnvStart, mode)
					break
				}
			}
		}
		testworker.Main()
		return
	}
	goleak.VerifyTestMain(sharedtest.Settled(m), goleak.Cleanup(func(int) { removeBinaries() }))
}
