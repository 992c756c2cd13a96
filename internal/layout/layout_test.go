package layout

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const module = "github.com/procfleet/procfleet"

// deps returns the packages that the packages matching pattern link,
// tests excluded.
func deps(t *testing.T, pattern string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", pattern)
	cmd.Dir = root(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pattern, err, stderr.String())
	}
	return strings.Fields(string(out))
}

// root is the module's directory, two levels up.
func root(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// forbidden returns the packages of list that match one of the rules: an
// exact path, or a prefix ending in "/" or "...".
func forbidden(list []string, rules []string) []string {
	var out []string
	for _, p := range list {
		for _, r := range rules {
			prefix, wild := strings.CutSuffix(r, "...")
			if p == r || (wild && strings.HasPrefix(p, prefix)) {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// TestDependencyRules pins the rules the README's Architecture section
// states: the client library links neither the NATS server nor anything
// that runs jobs, and the programs link no test code.
func TestDependencyRules(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern string
		banned  []string
	}{
		{"./dispatcher", []string{
			"github.com/nats-io/nats-server/v2/...",
			module + "/agent", module + "/pool", module + "/worker", module + "/embedded",
			module + "/internal/localfleet", module + "/cmd/...",
		}},
		{"./worker/...", []string{
			"github.com/nats-io/...",
			module + "/pool", module + "/queue", module + "/agent", module + "/dispatcher",
		}},
		{"./pool", []string{
			"github.com/nats-io/...",
			module + "/queue", module + "/agent", module + "/dispatcher",
		}},
		{"./agent", []string{
			"github.com/nats-io/nats-server/v2/...",
			module + "/dispatcher", module + "/embedded",
		}},
		{"./queue", []string{
			"github.com/nats-io/nats-server/v2/...",
			module + "/agent", module + "/pool", module + "/worker", module + "/dispatcher",
		}},
		{"./cmd/...", []string{
			"testing", "go.uber.org/goleak", "go.uber.org/zap/zaptest",
			module + "/fleettest...", module + "/internal/sharedtest",
		}},
	} {
		if bad := forbidden(deps(t, tc.pattern), tc.banned); len(bad) > 0 {
			t.Errorf("go list -deps %s links %v", tc.pattern, bad)
		}
	}
}

// maxLines is the longest a non-test Go file may be: past it, a file holds
// more than one idea and should be split by concept.
const maxLines = 600

func TestNoLongFiles(t *testing.T) {
	t.Parallel()
	err := filepath.WalkDir(root(t), func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != root(t) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		n := 0
		for sc := bufio.NewScanner(f); sc.Scan(); {
			n++
		}
		if n > maxLines {
			rel, _ := filepath.Rel(root(t), path)
			t.Errorf("%s has %d lines, more than %d", rel, n, maxLines)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
