package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/internal/cli"
)

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

func (u unitFile) get(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1] // like systemd, the last assignment wins
}

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		case strings.HasSuffix(line, `\`):
			t.Fatalf("%s:%d: line continuations are not supported by this test", path, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: want Key=Value inside a section, got %q", path, n, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// systemdFiles are every file deploy/systemd holds; a new one must be added
// here, and checked.
var systemdFiles = []string{
	"agent.env.example",
	"dispatcher.env.example",
	"nats-server.service",
	"nats.env.example",
	"procfleet-agent@.service",
	"procfleet-dispatcher.service",
}

func TestSystemdFiles(t *testing.T) {
	t.Parallel()
	entries, err := os.ReadDir(systemdDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, systemdFiles) {
		t.Fatalf("%s holds %v, want %v (add new files to systemdFiles and check them)", systemdDir, names, systemdFiles)
	}
}

// checkHardening checks what every unit must have.
func checkHardening(t *testing.T, name string, u unitFile) {
	t.Helper()
	svc := u["Service"]
	want := map[string]string{
		"NoNewPrivileges": "yes",
		"ProtectSystem":   "strict",
		"ProtectHome":     "yes",
		"PrivateTmp":      "yes",
	}
	for k, v := range want {
		if got := u.get("Service", k); got != v {
			t.Errorf("%s: %s=%q, want %q", name, k, got, v)
		}
	}
	if u.get("Service", "DynamicUser") != "yes" && u.get("Service", "User") == "" {
		t.Errorf("%s: runs as root: set DynamicUser=yes or User=", name)
	}
	if len(svc["ExecStart"]) != 1 {
		t.Fatalf("%s: want one ExecStart, got %q", name, svc["ExecStart"])
	}
	if u.get("Unit", "Description") == "" {
		t.Errorf("%s: no Description", name)
	}
	if u.get("Install", "WantedBy") != "multi-user.target" {
		t.Errorf("%s: WantedBy=%q, want multi-user.target", name, u.get("Install", "WantedBy"))
	}
	if d := stopTimeout(t, name, u); d <= 0 {
		t.Errorf("%s: no TimeoutStopSec", name)
	}
}

func stopTimeout(t *testing.T, name string, u unitFile) time.Duration {
	t.Helper()
	v := u.get("Service", "TimeoutStopSec")
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: TimeoutStopSec=%q: write it like 90s for this test: %v", name, v, err)
	}
	return d
}

// execStart splits the unit's ExecStart into words.
func execStart(t *testing.T, name string, u unitFile) []string {
	t.Helper()
	argv, err := cli.SplitArgs(u.get("Service", "ExecStart"))
	if err != nil || len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		t.Fatalf("%s: ExecStart=%q must start with an absolute path (err %v)", name, u.get("Service", "ExecStart"), err)
	}
	return argv
}

// agentStopBound is what the agent's stop may wait for: its job timeout (the
// env file's, else the flag default) plus 10s.
func agentStopBound(t *testing.T, env map[string]string) time.Duration {
	t.Helper()
	jt := 30 * time.Second
	if v, ok := env[cli.EnvName("job-timeout")]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		jt = d
	}
	return jt + 10*time.Second
}

func TestSystemdAgentUnit(t *testing.T) {
	t.Parallel()
	name := "procfleet-agent@.service"
	u := parseUnit(t, filepath.Join(systemdDir, name))
	checkHardening(t, name, u)

	argv := execStart(t, name, u)
	if filepath.Base(argv[0]) != "procfleet-agent" {
		t.Errorf("%s: ExecStart runs %s, want .../procfleet-agent", name, argv[0])
	}
	// Instances must differ in name, or they would fight over one registry
	// entry and one set of leases.
	i := slices.Index(argv, "--name")
	if i < 0 || i+1 >= len(argv) || !strings.Contains(argv[i+1], "%i") {
		t.Errorf("%s: ExecStart=%q must pass --name containing %%i", name, u.get("Service", "ExecStart"))
	}
	if got := u.get("Service", "KillMode"); got != "mixed" {
		t.Errorf("%s: KillMode=%q, want mixed (SIGTERM to the agent alone, which stops its workers)", name, got)
	}
	if got := u.get("Service", "KillSignal"); got != "" && got != "SIGTERM" {
		t.Errorf("%s: KillSignal=%q, want SIGTERM (what the agent handles)", name, got)
	}
	envFiles := u["Service"]["EnvironmentFile"]
	if !slices.Contains(envFiles, "/etc/procfleet/agent.env") {
		t.Errorf("%s: EnvironmentFile=%q, want /etc/procfleet/agent.env", name, envFiles)
	}

	env := readEnvFile(t, filepath.Join(systemdDir, "agent.env.example"))
	checkProgramEnv(t, "agent.env.example", programFlags(t, agentMain), env)
	if env["PROCFLEET_USER"] != userAgent {
		t.Errorf("agent.env.example: PROCFLEET_USER=%q, want %q", env["PROCFLEET_USER"], userAgent)
	}
	if got := env[cli.EnvName("inbox-prefix")]; got != inboxPrefix(userAgent) {
		t.Errorf("agent.env.example: %s=%q, want %q", cli.EnvName("inbox-prefix"), got, inboxPrefix(userAgent))
	}
	if env[cli.EnvName("worker-cmd")] == "" {
		t.Errorf("agent.env.example: %s is required", cli.EnvName("worker-cmd"))
	}
	if bound, got := agentStopBound(t, env), stopTimeout(t, name, u); got <= bound {
		t.Errorf("%s: TimeoutStopSec=%s, want more than job timeout + 10s = %s, or running jobs are killed", name, got, bound)
	}
}

func TestSystemdDispatcherUnit(t *testing.T) {
	t.Parallel()
	name := "procfleet-dispatcher.service"
	u := parseUnit(t, filepath.Join(systemdDir, name))
	checkHardening(t, name, u)

	argv := execStart(t, name, u)
	if filepath.Base(argv[0]) != "procfleet-dispatcher" || len(argv) < 2 || argv[1] != "serve" {
		t.Errorf("%s: ExecStart=%q, want .../procfleet-dispatcher serve", name, u.get("Service", "ExecStart"))
	}
	if got := u.get("Service", "KillMode"); got != "mixed" {
		t.Errorf("%s: KillMode=%q, want mixed", name, got)
	}
	if !slices.Contains(u["Service"]["EnvironmentFile"], "/etc/procfleet/dispatcher.env") {
		t.Errorf("%s: EnvironmentFile=%q, want /etc/procfleet/dispatcher.env", name, u["Service"]["EnvironmentFile"])
	}
	env := readEnvFile(t, filepath.Join(systemdDir, "dispatcher.env.example"))
	checkProgramEnv(t, "dispatcher.env.example", programFlags(t, dispatcherMain), env)
	if env["PROCFLEET_USER"] != userDispatcher {
		t.Errorf("dispatcher.env.example: PROCFLEET_USER=%q, want %q", env["PROCFLEET_USER"], userDispatcher)
	}
	if got := env[cli.EnvName("inbox-prefix")]; got != inboxPrefix(userDispatcher) {
		t.Errorf("dispatcher.env.example: %s=%q, want %q", cli.EnvName("inbox-prefix"), got, inboxPrefix(userDispatcher))
	}
	if _, ok := env[cli.EnvName("embedded")]; ok {
		t.Errorf("dispatcher.env.example: %s would start a private server next to nats-server", cli.EnvName("embedded"))
	}
}

func TestSystemdNATSUnit(t *testing.T) {
	t.Parallel()
	name := "nats-server.service"
	u := parseUnit(t, filepath.Join(systemdDir, name))
	checkHardening(t, name, u)

	argv := execStart(t, name, u)
	i := slices.Index(argv, "--config")
	if filepath.Base(argv[0]) != "nats-server" || i < 0 || i+1 >= len(argv) || filepath.Base(argv[i+1]) != natsConf {
		t.Fatalf("%s: ExecStart=%q, want .../nats-server --config .../%s", name, u.get("Service", "ExecStart"), natsConf)
	}

	// JetStream must live in the unit's writable state directory: with
	// ProtectSystem=strict everything else is read-only.
	state := u.get("Service", "StateDirectory")
	opts := loadConf(t, natsConf, map[string]string{userDispatcher: "a", userAgent: "b", userClient: "c"})
	if state == "" || !strings.HasPrefix(opts.StoreDir+"/", filepath.Join("/var/lib", state)+"/") {
		t.Errorf("%s: StateDirectory=%q, but %s stores JetStream in %s", name, state, natsConf, opts.StoreDir)
	}

	// The environment file must define every password the configuration
	// references.
	env := readEnvFile(t, filepath.Join(systemdDir, "nats.env.example"))
	conf, err := os.ReadFile(natsConf)
	if err != nil {
		t.Fatal(err)
	}
	refs := map[string]bool{}
	for _, m := range passwordRef.FindAllString(string(conf), -1) {
		refs[m[1:]] = true
	}
	for ref := range refs {
		if _, ok := env[ref]; !ok {
			t.Errorf("nats.env.example: %s is referenced by %s but not set", ref, natsConf)
		}
	}
	for k := range env {
		if !refs[k] {
			t.Errorf("nats.env.example: %s is not referenced by %s", k, natsConf)
		}
	}
	if !slices.Contains(u["Service"]["EnvironmentFile"], "/etc/nats/nats.env") {
		t.Errorf("%s: EnvironmentFile=%q, want /etc/nats/nats.env", name, u["Service"]["EnvironmentFile"])
	}
}

// TestSystemdAnalyzeVerify runs `systemd-analyze verify` on the units where
// the tool exists. verify insists that ExecStart's program exists, so each
// unit is checked from a copy whose program is a stub; the template is
// checked as instance @1, which expands its specifiers.
func TestSystemdAnalyzeVerify(t *testing.T) {
	t.Parallel()
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not found: unit verification skipped (the other unit checks still run)")
		return
	}
	dir := t.TempDir()
	stubs := filepath.Join(dir, "bin")
	if err := os.Mkdir(stubs, 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, name := range []string{"procfleet-agent@.service", "procfleet-dispatcher.service", "nats-server.service"} {
		src := filepath.Join(systemdDir, name)
		argv := execStart(t, name, parseUnit(t, src))
		stub := filepath.Join(stubs, filepath.Base(argv[0]))
		if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(string(data), "ExecStart="+argv[0], "ExecStart="+stub, 1)
		dst := filepath.Join(dir, strings.Replace(name, "@.", "@1.", 1))
		if err := os.WriteFile(dst, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, dst)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool, append([]string{"verify", "--man=no"}, units...)...)
	out, err := cmd.CombinedOutput()
	// verify exits 0 on many problems (an unknown key, a bad value) and
	// only prints them: any line about our units is a failure. Lines about
	// the host's own units are not ours to judge.
	var ours []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		for _, u := range units {
			if strings.Contains(line, filepath.Base(u)) {
				ours = append(ours, line)
				break
			}
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	if len(out) > 0 {
		t.Logf("systemd-analyze verify (host noise):\n%s", out)
	}
}
