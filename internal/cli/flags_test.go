package cli_test

import (
	"flag"
	"io"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/internal/cli"
)

type parsed struct {
	user, nats string
	json       bool
	args       []string
}

func parseWith(args []string, withArgs bool) (parsed, error) {
	fs := flag.NewFlagSet("dlq", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var p parsed
	fs.StringVar(&p.user, "user", "", "")
	fs.StringVar(&p.nats, "nats", "", "")
	fs.BoolVar(&p.json, "json", false, "")
	var err error
	if withArgs {
		err = cli.ParseArgs(fs, args)
	} else {
		err = cli.Parse(fs, args)
	}
	p.args = fs.Args()
	return p, err
}

// TestParseFlagsAnywhere: flags after a positional argument count
// (`dlq replay 1 --nats … --user …` once ignored them).
func TestParseFlagsAnywhere(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want parsed
	}{
		{[]string{"replay", "1", "--nats", "nats://h:4222", "--user", "dispatcher"},
			parsed{user: "dispatcher", nats: "nats://h:4222", args: []string{"replay", "1"}}},
		{[]string{"--user", "u", "replay", "1", "2", "--json"},
			parsed{user: "u", json: true, args: []string{"replay", "1", "2"}}},
		{[]string{"replay", "--user=u", "1", "-json", "2"},
			parsed{user: "u", json: true, args: []string{"replay", "1", "2"}}},
		// After "--" everything is an argument, even what looks like a flag.
		{[]string{"replay", "--user", "u", "--", "--json", "-5"},
			parsed{user: "u", args: []string{"replay", "--json", "-5"}}},
		{[]string{"-", "--json"}, parsed{json: true, args: []string{"-"}}},
		{nil, parsed{args: []string{}}},
	} {
		got, err := parseWith(tc.args, true)
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tc.args, err)
			continue
		}
		if got.user != tc.want.user || got.nats != tc.want.nats || got.json != tc.want.json || !slices.Equal(got.args, tc.want.args) {
			t.Errorf("ParseArgs(%q) = %+v, want %+v", tc.args, got, tc.want)
		}
	}
	if _, err := parseWith([]string{"replay", "1", "--bogus"}, true); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("an unknown flag after an argument: err = %v, want one naming it", err)
	}
}

// TestParseRefusesArguments: a command that takes none says so rather than
// ignoring what it was given.
func TestParseRefusesArguments(t *testing.T) {
	t.Parallel()
	_, err := parseWith([]string{"--user", "u", "stray", "--json"}, false)
	if err == nil || !strings.Contains(err.Error(), `unexpected argument "stray"`) || !strings.Contains(err.Error(), "dlq") {
		t.Fatalf("err = %v, want one naming the argument and the command", err)
	}
	got, err := parseWith([]string{"--user", "u", "--json"}, false)
	if err != nil || got.user != "u" || !got.json {
		t.Fatalf("flags only: %+v, %v", got, err)
	}
}

// TestParseEnvAfterInterleaving: variables fill only the flags not given,
// wherever the given ones stood.
func TestParseEnvAfterInterleaving(t *testing.T) {
	t.Setenv("PROCFLEET_USER", "from-env")
	t.Setenv("PROCFLEET_NATS", "nats://env:4222")
	got, err := parseWith([]string{"replay", "1", "--user", "from-flag"}, true)
	if err != nil || got.user != "from-flag" || got.nats != "nats://env:4222" {
		t.Fatalf("got %+v, %v; want the flag's user and the variable's URL", got, err)
	}
}

func TestLocalAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		":8080":          "127.0.0.1:8080",
		":0":             "127.0.0.1:0",
		"0.0.0.0:8080":   "0.0.0.0:8080",
		"10.1.2.3:80":    "10.1.2.3:80",
		"localhost:9":    "localhost:9",
		"[::1]:8080":     "[::1]:8080",
		"not an address": "not an address",
	} {
		if got := cli.LocalAddr(in); got != want {
			t.Errorf("LocalAddr(%q) = %q, want %q", in, got, want)
		}
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "0.0.0.0:1": false, "[::]:1": false, "192.0.2.1:1": false} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := cli.IsLoopback(a); got != want {
			t.Errorf("IsLoopback(%s) = %v, want %v", addr, got, want)
		}
	}
}

// TestMetricsBareportIsLoopback: --metrics :PORT binds 127.0.0.1 only.
func TestMetricsBarePortIsLoopback(t *testing.T) {
	t.Parallel()
	ms, err := cli.ServeMetrics(":0", prometheus.NewRegistry(), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ms.Close(t.Context()) }()
	host, _, err := net.SplitHostPort(ms.Addr)
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("metrics on %s, want 127.0.0.1", ms.Addr)
	}
}
