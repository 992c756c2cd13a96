package localfleet

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// FindInCheckout finds rel (a path inside the procfleet repository) in the
// current directory or one of its parents, so that the tools work from
// anywhere inside a checkout.
func FindInCheckout(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		p := filepath.Join(dir, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("%s not found from the current directory up", rel)
		}
		dir = parent
	}
}

// FindExample locates examples/<name> from the current directory upwards.
func FindExample(name string) (string, error) {
	p, err := FindInCheckout(filepath.Join("examples", name))
	if err != nil {
		return "", fmt.Errorf("%w; run from the procfleet checkout or pass --worker-cmd", err)
	}
	return p, nil
}

// Program describes a program of this repository that a tool runs as a
// child: the agent, or the Go test worker.
type Program struct {
	// Names are the file names it may have next to the running executable
	// (an installed set), in order of preference.
	Names []string
	// PathName is its name on PATH.
	PathName string
	// Source is its main package inside the checkout, e.g. "cmd/agent".
	Source string
	// Hint says how to provide it when it is found nowhere.
	Hint string
}

// AgentProgram is cmd/agent.
var AgentProgram = Program{
	Names: []string{"agent", "procfleet-agent"}, PathName: "procfleet-agent", Source: filepath.Join("cmd", "agent"),
	Hint: "install cmd/agent next to the dispatcher or pass --agent-bin",
}

// TestWorkerProgram is the Go test worker (package testworker) as a program
// of its own, so that its code is never linked into cmd/dispatcher.
var TestWorkerProgram = Program{
	Names: []string{"procfleet-testworker"}, PathName: "procfleet-testworker",
	Source: filepath.Join("fleettest", "testworker", "procfleet-testworker"),
	Hint:   "install fleettest/testworker/procfleet-testworker next to the dispatcher or pass --worker-cmd",
}

// Find returns the program's path: next to the running executable, on
// PATH, or else built from the checkout with `go build` into dir (the
// `go run` case).
func (p Program) Find(ctx context.Context, dir string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		for _, name := range p.Names {
			c := filepath.Join(filepath.Dir(exe), name)
			if st, err := os.Stat(c); err == nil && !st.IsDir() && c != exe {
				return c, nil
			}
		}
	}
	if c, err := exec.LookPath(p.PathName); err == nil {
		return c, nil
	}
	src, err := FindInCheckout(p.Source)
	if err != nil {
		return "", fmt.Errorf("no %s program found: %s", p.PathName, p.Hint)
	}
	out := filepath.Join(dir, p.PathName)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./%s: %v\n%s", filepath.ToSlash(p.Source), err, b)
	}
	return out, nil
}
