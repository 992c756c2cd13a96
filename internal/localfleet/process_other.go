//go:build unix && !linux

package localfleet

import "syscall"

// agentProcAttr puts the agent in its own process group. Only Linux has a
// parent-death signal: elsewhere an agent outlives a dispatcher that is
// killed with SIGKILL (a graceful stop still stops it).
func agentProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
