package deploy_test

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// userSummary is what a configuration says about one user.
type userSummary struct {
	Password    string
	Account     string
	Permissions *server.Permissions
}

func usersOf(t *testing.T, where string, opts *server.Options) map[string]userSummary {
	t.Helper()
	if len(opts.Nkeys) > 0 || opts.Username != "" || opts.Authorization != "" || opts.NoAuthUser != "" {
		t.Errorf("%s: only the account's users may log in (found nkeys, a global user, a token or no_auth_user)", where)
	}
	out := map[string]userSummary{}
	for _, u := range opts.Users {
		acc := ""
		if u.Account != nil {
			acc = u.Account.Name
		}
		out[u.Username] = userSummary{Password: u.Password, Account: acc, Permissions: u.Permissions}
	}
	return out
}

func TestConfRoles(t *testing.T) {
	t.Parallel()
	for _, path := range []string{natsConf, k8sNATSConf} {
		passwords := map[string]string{userDispatcher: "d1", userAgent: "a1", userClient: "c1"}
		opts := loadConf(t, path, passwords)
		users := usersOf(t, path, opts)
		var names []string
		for n, u := range users {
			names = append(names, n)
			if u.Account != fleetAccount {
				t.Errorf("%s: user %s is in account %q, want %s", path, n, u.Account, fleetAccount)
			}
			if u.Password != passwords[n] {
				t.Errorf("%s: user %s has password %q, want the substituted %q", path, n, u.Password, passwords[n])
			}
			if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
				t.Errorf("%s: user %s lacks publish or subscribe permissions: it may do anything", path, n)
			}
		}
		slices.Sort(names)
		if want := []string{userAgent, userClient, userDispatcher}; !slices.Equal(names, want) {
			t.Errorf("%s: users %v, want %v", path, names, want)
		}
		if !opts.JetStream || opts.StoreDir == "" || !filepath.IsAbs(opts.StoreDir) {
			t.Errorf("%s: JetStream %v in %q, want it on with an absolute store_dir", path, opts.JetStream, opts.StoreDir)
		}
		if opts.HTTPPort == 0 {
			t.Errorf("%s: monitoring is off; KEDA and the probes read it", path)
		}
		if opts.MaxPayload < 1<<20 {
			t.Errorf("%s: max_payload %d is below the 1MB default", path, opts.MaxPayload)
		}
	}
}

// TestKubernetesConfMatches keeps the two configurations' security in step:
// the Kubernetes copy differs in paths and listen addresses only.
func TestKubernetesConfMatches(t *testing.T) {
	t.Parallel()
	passwords := map[string]string{userDispatcher: "d1", userAgent: "a1", userClient: "c1"}
	base := loadConf(t, natsConf, passwords)
	k8s := loadConf(t, k8sNATSConf, passwords)
	bu, ku := usersOf(t, natsConf, base), usersOf(t, k8sNATSConf, k8s)
	for name, want := range bu {
		if got := ku[name]; !reflect.DeepEqual(got, want) {
			t.Errorf("user %s differs:\n%s: %+v\n%s: %+v", name, natsConf, want, k8sNATSConf, got)
		}
	}
	if base.MaxPayload != k8s.MaxPayload || base.Port != k8s.Port || base.HTTPPort != k8s.HTTPPort {
		t.Errorf("max_payload, port or monitoring port differ: %d/%d/%d vs %d/%d/%d",
			base.MaxPayload, base.Port, base.HTTPPort, k8s.MaxPayload, k8s.Port, k8s.HTTPPort)
	}
}

// TestConfFromEnvironment loads the configurations as shipped, with the
// passwords in the environment the way systemd and Kubernetes provide them:
// the example values must come through as strings. Not parallel: it sets
// the environment.
func TestConfFromEnvironment(t *testing.T) {
	for _, tc := range []struct{ conf, env string }{
		{natsConf, filepath.Join(systemdDir, "nats.env.example")},
		{k8sNATSConf, filepath.Join(kubernetesDir, "nats-users.env.example")},
	} {
		env := readEnvFile(t, tc.env)
		for k, v := range env {
			t.Setenv(k, v)
		}
		opts, err := server.ProcessConfigFile(tc.conf)
		if err != nil {
			t.Fatalf("%s with %s: %v", tc.conf, tc.env, err)
		}
		for name, u := range usersOf(t, tc.conf, opts) {
			ref := "PROCFLEET_" + strings.ToUpper(name) + "_PASSWORD"
			if u.Password != env[ref] {
				t.Errorf("%s: user %s got password %q from %s, want %q", tc.conf, name, u.Password, ref, env[ref])
			}
		}

		// Without a password the server must refuse to start rather than
		// run with an empty one.
		for k := range env {
			os.Unsetenv(k) // t.Setenv restores it
			if _, err := server.ProcessConfigFile(tc.conf); err == nil || !strings.Contains(err.Error(), k) {
				t.Errorf("%s without %s: err = %v, want one naming the variable", tc.conf, k, err)
			}
			os.Setenv(k, env[k])
		}
	}
}
