//go:build unix && !linux

package bench

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
)

var errNoAffinity = errors.New("CPU pinning needs Linux")

func pinSelf([]int) (func(), error) { return nil, errNoAffinity }

func startPinned(cmd *exec.Cmd, cpus []int) error {
	if len(cpus) > 0 {
		return errNoAffinity
	}
	return cmd.Start()
}

func childProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func terminateChild(p *os.Process) error { return p.Signal(syscall.SIGTERM) }

func killChild(p *os.Process) error { return syscall.Kill(-p.Pid, syscall.SIGKILL) }
