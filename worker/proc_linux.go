package worker

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

func platformSupported() error { return nil }

// sysProcAttr puts the worker in its own process group, so that stopping it
// reaches its children too, and has the kernel SIGKILL it when the thread
// that started it exits (see the package doc), so no orphan outlives a
// crashed agent.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// pPID is waitid's P_PID id type (not exported by package syscall).
const pPID = 1

// siginfo is the head of Linux's siginfo_t; the kernel writes 128 bytes.
type siginfo struct {
	Signo int32
	Errno int32
	Code  int32
	_     [116]byte
}

// waitExitNoReap blocks until the child pid has exited without reaping it
// (WNOWAIT). While the zombie is unreaped its pid, and therefore its process
// group id, cannot be reused, so the group can still be signalled safely.
func waitExitNoReap(pid int) error {
	for {
		var info siginfo
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
			uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT, 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return e
		}
		return nil
	}
}

// hasExited reports, without blocking or reaping, whether the child pid has
// exited and waits to be reaped.
func hasExited(pid int) bool {
	var info siginfo
	_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid),
		uintptr(unsafe.Pointer(&info)), syscall.WEXITED|syscall.WNOWAIT|syscall.WNOHANG, 0, 0)
	// With WNOHANG the kernel leaves siginfo zeroed when the child is still
	// running.
	return e == 0 && info.Signo != 0
}

// signalGroup sends sig to the process group led by pid, and to pid itself
// in case the worker moved to another group. The caller guarantees the
// leader has not been reaped yet, so neither id can have been reused.
func signalGroup(pid int, sig syscall.Signal) error {
	gerr := syscall.Kill(-pid, sig)
	perr := syscall.Kill(pid, sig)
	switch {
	case gerr == nil || gerr == syscall.ESRCH:
		if perr == syscall.ESRCH {
			return nil
		}
		return perr
	default:
		return gerr
	}
}

// cancelSignal sends SIGUSR1 to the main thread of pid, whose thread id is
// pid (protocol.FeatureCancelSignal): a signal to the process could go to
// another thread and leave the main thread's blocking call alone. The
// caller guarantees pid has not been reaped.
func cancelSignal(pid int) error { return syscall.Tgkill(pid, pid, syscall.SIGUSR1) }

// readRSS returns VmRSS of pid in bytes.
func readRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", line)
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmRSS: %w", err)
		}
		return kb << 10, nil
	}
	// Kernel threads and zombies have no VmRSS line.
	return 0, errors.New("no VmRSS in /proc status (process exiting?)")
}

// pipeUnread returns how many bytes the pipe of f (either end) holds
// unread (FIONREAD); false if it cannot tell, e.g. f is closed.
func pipeUnread(f *os.File) (int, bool) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, false
	}
	var n int32
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCINQ, uintptr(unsafe.Pointer(&n)))
	}); err != nil || errno != 0 {
		return 0, false
	}
	return int(n), true
}
