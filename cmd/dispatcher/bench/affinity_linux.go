package bench

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"
)

// cpuMask is a sched_setaffinity mask of up to 1024 CPUs.
type cpuMask [16]uint64

func maskOf(cpus []int) (cpuMask, error) {
	var m cpuMask
	for _, c := range cpus {
		if c < 0 || c >= 64*len(m) {
			return m, fmt.Errorf("CPU %d out of range", c)
		}
		m[c/64] |= 1 << (c % 64)
	}
	return m, nil
}

func setAffinity(tid int, m *cpuMask) error {
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, uintptr(tid), unsafe.Sizeof(*m), uintptr(unsafe.Pointer(m)))
	if e != 0 {
		return e
	}
	return nil
}

func getAffinity(tid int) (cpuMask, error) {
	var m cpuMask
	_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETAFFINITY, uintptr(tid), unsafe.Sizeof(m), uintptr(unsafe.Pointer(&m)))
	if e != 0 {
		return m, e
	}
	return m, nil
}

// pinSelf pins every thread of this process to cpus (threads started later
// inherit it) and returns a function that restores the previous mask.
func pinSelf(cpus []int) (restore func(), err error) {
	m, err := maskOf(cpus)
	if err != nil {
		return nil, err
	}
	old, err := getAffinity(0)
	if err != nil {
		return nil, err
	}
	if err := setAllThreads(&m); err != nil {
		_ = setAllThreads(&old)
		return nil, err
	}
	return func() { _ = setAllThreads(&old) }, nil
}

func setAllThreads(m *cpuMask) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := setAffinity(tid, m); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("sched_setaffinity(%d): %w", tid, err)
		}
	}
	return nil
}

// startPinned starts cmd with its CPU affinity set to cpus (none: this
// process's). The fork happens on a locked thread pinned for the moment,
// so the child and all its threads start pinned.
func startPinned(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) == 0 {
		return cmd.Start()
	}
	m, err := maskOf(cpus)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		prev, err := getAffinity(0)
		if err != nil {
			errc <- fmt.Errorf("sched_getaffinity: %w", err)
			return // the thread ends with the locked goroutine
		}
		if err := setAffinity(0, &m); err != nil {
			errc <- fmt.Errorf("sched_setaffinity: %w", err)
			return
		}
		err = cmd.Start()
		// The thread must live on unpinned: the child's parent-death
		// signal fires when the thread that forked it ends.
		if rerr := setAffinity(0, &prev); rerr != nil {
			if err == nil {
				_ = killChild(cmd.Process)
				_ = cmd.Wait()
				err = fmt.Errorf("sched_setaffinity (restore): %w", rerr)
			}
			errc <- err
			return // the thread ends with the locked goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

func terminateChild(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

func killChild(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
