package localfleet

import (
	"context"
	"os"
	"os/exec"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// AgentProcess is one supervised agent program.
type AgentProcess struct {
	// Name is the agent's name, for the logs.
	Name string
	// Bin and Args are the program and its flags.
	Bin  string
	Args []string
	// StopTimeout bounds the graceful stop (SIGTERM, which drains the
	// agent's jobs) before SIGKILL.
	StopTimeout time.Duration
	// Log receives start, exit and stop.
	Log *zap.Logger
}

// Supervise runs the agent, restarting it with a growing pause if it exits
// on its own, until ctx ends; then it stops it gracefully and returns once
// it has exited. The agent runs in its own process group, so a terminal's
// Ctrl-C reaches only this process, which decides the order; where the
// platform has one (Linux), a parent-death signal stops it if this process
// dies first.
func (p *AgentProcess) Supervise(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		cmd := exec.Command(p.Bin, p.Args...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		cmd.SysProcAttr = agentProcAttr()
		if err := cmd.Start(); err != nil {
			p.Log.Error("start agent", zap.String("agent", p.Name), zap.Error(err))
			return
		}
		p.Log.Info("agent started", zap.String("agent", p.Name), zap.Int("pid", cmd.Process.Pid))
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case err := <-exited:
			p.Log.Warn("agent exited; restarting", zap.String("agent", p.Name), zap.Error(err), zap.Duration("after", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		case <-ctx.Done():
			_ = terminate(cmd.Process)
			select {
			case <-exited:
			case <-time.After(p.StopTimeout):
				p.Log.Warn("agent did not stop in time; killing it", zap.String("agent", p.Name))
				_ = killGroup(cmd.Process)
				<-exited
			}
			p.Log.Info("agent stopped", zap.String("agent", p.Name), zap.String("pid", strconv.Itoa(cmd.Process.Pid)))
			return
		}
	}
}
