//go:build !linux

package worker

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
)

// platformSupported fails Start at once with a clear error: without a
// parent-death signal and waitid(WNOWAIT) the package cannot keep its
// promises (no orphans, no signal to a reused pid).
func platformSupported() error {
	return fmt.Errorf("%w (this is %s)", ErrUnsupported, runtime.GOOS)
}

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }

func waitExitNoReap(int) error { return ErrUnsupported }

func hasExited(int) bool { return true }

func signalGroup(int, syscall.Signal) error { return ErrUnsupported }

func cancelSignal(int) error { return ErrUnsupported }

func readRSS(int) (int64, error) { return 0, ErrUnsupported }

func pipeUnread(*os.File) (int, bool) { return 0, false }
