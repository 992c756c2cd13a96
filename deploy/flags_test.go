package deploy_test

import (
	"bufio"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/internal/cli"
)

// The programs' main packages, whose flags the deployment files set through
// PROCFLEET_* variables.
const (
	agentMain      = "../cmd/agent"
	dispatcherMain = "../cmd/dispatcher"
)

// flagRegistrars maps flag.FlagSet methods to the position of the flag name
// among their arguments.
var flagRegistrars = map[string]int{
	"String": 0, "Int": 0, "Int64": 0, "Uint": 0, "Uint64": 0, "Bool": 0, "Duration": 0, "Float64": 0,
	"Func": 0, "BoolFunc": 0,
	"StringVar": 1, "IntVar": 1, "Int64Var": 1, "UintVar": 1, "Uint64Var": 1, "BoolVar": 1,
	"DurationVar": 1, "Float64Var": 1, "TextVar": 1, "Var": 1,
}

// programFlags returns the flags a program accepts: those its main package
// registers, read from the source (so this test does not depend on the
// programs' dependencies building), plus cli.Auth's, which both programs
// register.
func programFlags(t *testing.T, mainDir string) map[string]bool {
	t.Helper()
	flags := authFlags()
	files, err := filepath.Glob(filepath.Join(mainDir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		// zap.String("addr", ...) looks like fs.String("addr", ...): calls
		// on an imported package are not flag registrations.
		imports := map[string]bool{}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			name := filepath.Base(p)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			imports[name] = true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			pos, ok := flagRegistrars[sel.Sel.Name]
			if !ok || len(call.Args) <= pos {
				return true
			}
			if recv, ok := sel.X.(*ast.Ident); ok && imports[recv.Name] {
				return true
			}
			lit, ok := call.Args[pos].(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			if name, err := strconv.Unquote(lit.Value); err == nil {
				flags[name] = true
			}
			return true
		})
	}
	if len(flags) == len(authFlags()) {
		t.Fatalf("found no flags in %s: has flag registration moved? Update agentMain/dispatcherMain", mainDir)
	}
	return flags
}

func authFlags() map[string]bool {
	fs := flag.NewFlagSet("auth", flag.ContinueOnError)
	new(cli.Auth).Register(fs)
	out := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { out[f.Name] = true })
	return out
}

// envToFlag maps PROCFLEET_POOL_SIZE back to pool-size.
func envToFlag(env string) (string, bool) {
	rest, ok := strings.CutPrefix(env, "PROCFLEET_")
	if !ok {
		return "", false
	}
	return strings.ReplaceAll(strings.ToLower(rest), "_", "-"), true
}

// checkProgramEnv checks that every variable in env is one the program
// reads (NATS_URL or the PROCFLEET_* of one of its flags) and that the
// values of well-known flags parse. where names the file for messages.
func checkProgramEnv(t *testing.T, where string, flags map[string]bool, env map[string]string) {
	t.Helper()
	for name, value := range env {
		if name == "NATS_URL" {
			if !strings.HasPrefix(value, "nats://") && !strings.HasPrefix(value, "tls://") {
				t.Errorf("%s: NATS_URL=%q is not a nats:// or tls:// URL", where, value)
			}
			continue
		}
		fl, ok := envToFlag(name)
		if !ok {
			t.Errorf("%s: %s is not a variable the program reads (want NATS_URL or PROCFLEET_<FLAG>)", where, name)
			continue
		}
		if !flags[fl] || cli.EnvName(fl) != name {
			t.Errorf("%s: %s sets --%s, which the program does not have", where, name, fl)
			continue
		}
		if err := checkFlagValue(fl, value); err != nil {
			t.Errorf("%s: %s=%q: %v", where, name, value, err)
		}
	}
}

// checkFlagValue parses the values of flags whose type is clear from the
// name, the way the programs will.
func checkFlagValue(name, value string) error {
	if value == "" {
		return nil // filled in by the platform (a Secret, a fieldRef)
	}
	switch {
	case name == "worker-cmd":
		words, err := cli.SplitArgs(value)
		if err == nil && len(words) == 0 {
			err = fmt.Errorf("empty command")
		}
		return err
	case name == "max-rss":
		var b cli.Bytes
		return b.Set(value)
	case strings.HasSuffix(name, "-timeout") || strings.HasSuffix(name, "ttl"):
		_, err := time.ParseDuration(value)
		return err
	case name == "pool-size" || name == "max-jobs" || name == "partitions" || name == "capacity":
		n, err := strconv.Atoi(value)
		if err == nil && n < 0 {
			err = fmt.Errorf("negative")
		}
		return err
	case name == "log-format":
		if value != "console" && value != "json" {
			return fmt.Errorf("want console or json")
		}
	case name == "log-level":
		switch value {
		case "debug", "info", "warn", "error":
		default:
			return fmt.Errorf("want debug, info, warn or error")
		}
	}
	return nil
}

// readEnvFile reads KEY=VALUE lines the way systemd's EnvironmentFile= and
// kustomize's envs do for the simple forms used here: comments and blank
// lines skipped, one pair of surrounding quotes removed.
func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			t.Fatalf("%s:%d: want KEY=VALUE, got %q", path, n, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		if _, dup := env[k]; dup {
			t.Fatalf("%s:%d: %s set twice", path, n, k)
		}
		env[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

// TestProgramsRegisterAuth guards the deployment files' assumption that
// both programs accept cli.Auth's flags (PROCFLEET_USER, ...) and dial with
// them.
func TestProgramsRegisterAuth(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{agentMain, dispatcherMain} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		var src strings.Builder
		for _, path := range files {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			src.Write(data)
		}
		for _, want := range []string{"cli.Auth", ".Register(", ".Options()"} {
			if !strings.Contains(src.String(), want) {
				t.Errorf("%s: no %q: PROCFLEET_USER/PROCFLEET_PASSWORD in deploy/ need the program to register "+
					"cli.Auth's flags (Auth.Register(fs)) and dial with Auth.Options()", dir, want)
			}
		}
	}
}

func TestProgramFlagsFound(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		dir  string
		want []string
	}{
		{agentMain, []string{"nats", "worker-cmd", "pool-size", "name", "job-timeout", "user", "password"}},
		{dispatcherMain, []string{"nats", "http", "partitions", "user", "password"}},
	} {
		flags := programFlags(t, tc.dir)
		for _, w := range tc.want {
			if !flags[w] {
				t.Errorf("%s: flag --%s not found (found %d flags)", tc.dir, w, len(flags))
			}
		}
		if flags["addr"] || flags["url"] {
			t.Errorf("%s: a logging field was taken for a flag", tc.dir)
		}
	}
}
