package localfleet

import "syscall"

// agentProcAttr puts the agent in its own process group and has the kernel
// send it SIGTERM (a graceful stop) if this process dies.
func agentProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
