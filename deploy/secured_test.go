package deploy_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// Paths of the deployment files, relative to this package.
const (
	natsConf      = "nats-server.conf"
	k8sNATSConf   = "kubernetes/nats-server.conf"
	systemdDir    = "systemd"
	kubernetesDir = "kubernetes"
)

// The users nats-server.conf defines, one per role.
const (
	userDispatcher = "dispatcher"
	userAgent      = "agent"
	userClient     = "client"
)

// fleetAccount is the account that holds the fleet's streams and users.
const fleetAccount = "PROCFLEET"

// passwordRef matches the configuration's password references,
// $PROCFLEET_<USER>_PASSWORD.
var passwordRef = regexp.MustCompile(`\$PROCFLEET_([A-Z0-9]+)_PASSWORD\b`)

// securedServer is an embedded nats-server started from one of the deploy
// configurations, with its accounts and permissions intact and only the
// listen port, monitoring port and store directory moved into the test.
type securedServer struct {
	*server.Server
	// URL is what clients dial.
	URL string
	// Options is the configuration the server was started with.
	Options *server.Options
	// Passwords are the users' passwords, substituted for the
	// configuration's $PROCFLEET_<USER>_PASSWORD references.
	Passwords map[string]string
}

// startSecuredServer starts a server from deploy/nats-server.conf. It is
// the starting point for every test that checks what the fleet can do under
// the deployed permissions: connect as a role with connect (or build a
// cli.Auth with auth) and, for most tests, create the topology first with
// ensureTopology, as the dispatcher would.
func startSecuredServer(t testing.TB) *securedServer {
	t.Helper()
	return startSecuredServerFrom(t, natsConf)
}

// startSecuredServerFrom is startSecuredServer for another configuration
// file, e.g. the Kubernetes one.
func startSecuredServerFrom(t testing.TB, confPath string) *securedServer {
	t.Helper()
	passwords := map[string]string{}
	for _, u := range []string{userDispatcher, userAgent, userClient} {
		passwords[u] = "pw" + randomHex(t, 16)
	}
	opts := loadConf(t, confPath, passwords)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, url, err := embedded.Start(ctx, embedded.Config{
		Host:        "127.0.0.1",
		StoreDir:    t.TempDir(),
		MonitorPort: -1,
		MaxMemory:   64 << 20,
		MaxStore:    1 << 30,
		Options:     opts,
		// Warn and above: permission violations are logged as errors and
		// belong in the test log; the notices would drown it.
		Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Named("nats-server"),
	})
	if err != nil {
		t.Fatalf("start nats-server from %s: %v", confPath, err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return &securedServer{Server: s, URL: url, Options: opts, Passwords: passwords}
}

// loadConf parses confPath the way nats-server would, with the password
// references replaced by passwords (user name -> password) instead of being
// read from the environment, which parallel tests cannot set.
func loadConf(t testing.TB, confPath string, passwords map[string]string) *server.Options {
	t.Helper()
	data, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	text := passwordRef.ReplaceAllStringFunc(string(data), func(ref string) string {
		user := strings.ToLower(passwordRef.FindStringSubmatch(ref)[1])
		pw, ok := passwords[user]
		if !ok {
			missing = append(missing, ref)
			return ref
		}
		return strconv.Quote(pw)
	})
	if len(missing) > 0 {
		t.Fatalf("%s references passwords of unknown users: %v", confPath, missing)
	}
	tmp := filepath.Join(t.TempDir(), filepath.Base(confPath))
	if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(tmp)
	if err != nil {
		t.Fatalf("%s: %v", confPath, err)
	}
	return opts
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// inboxPrefix is the reply prefix the configuration confines user to.
func inboxPrefix(user string) string { return "_INBOX_" + user }

// auth returns the flags a program started as user would be given.
func (s *securedServer) auth(user string) *cli.Auth {
	return &cli.Auth{User: user, Password: s.Passwords[user], InboxPrefix: inboxPrefix(user)}
}

// userConn is a connection as one user that records the permission
// violations the server reports to it.
type userConn struct {
	*nats.Conn
	User string
	errs chan error
}

// connect dials the server as user, through cli.Auth like the programs do,
// and closes the connection when the test ends.
func (s *securedServer) connect(t testing.TB, user string, extra ...nats.Option) *userConn {
	t.Helper()
	opts, err := s.auth(user).Options()
	if err != nil {
		t.Fatal(err)
	}
	uc := &userConn{User: user, errs: make(chan error, 256)}
	opts = append(opts,
		nats.Name(t.Name()+"/"+user),
		nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case uc.errs <- err:
			default:
			}
		}),
	)
	nc, err := nats.Connect(s.URL, append(opts, extra...)...)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	uc.Conn = nc
	return uc
}

// jetstream returns a JetStream handle on the connection.
func (uc *userConn) jetstream(t testing.TB) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(uc.Conn)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// open binds to the existing topology as this user, the way agents and
// clients do.
func (uc *userConn) open(t testing.TB) *queue.Topology {
	t.Helper()
	topo, err := queue.Open(testCtx(t), uc.jetstream(t), queue.Config{})
	if err != nil {
		t.Fatalf("queue.Open as %s: %v", uc.User, err)
	}
	return topo
}

// ensureTopology creates the fleet's streams, consumers and buckets as the
// dispatcher user, as `dispatcher serve` does, with cfg's settings.
func (s *securedServer) ensureTopology(t testing.TB, cfg queue.Config) (*queue.Topology, *userConn) {
	t.Helper()
	nc := s.connect(t, userDispatcher)
	topo, err := queue.Ensure(testCtx(t), nc.jetstream(t), cfg)
	if err != nil {
		t.Fatalf("queue.Ensure as dispatcher: %v", err)
	}
	return topo, nc
}

// expectDenied waits for the server to report that this user was refused a
// subject starting with subject (publish or subscribe); a prefix, because
// some API subjects end in generated names. Any other violation first fails
// the test.
func (uc *userConn) expectDenied(t testing.TB, subject string) {
	t.Helper()
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	select {
	case err := <-uc.errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("%s: got error %v, want a permissions violation for %q", uc.User, err, subject)
		}
		if !strings.Contains(err.Error(), `"`+subject) {
			t.Fatalf("%s: got %v, want a permissions violation for %q", uc.User, err, subject)
		}
	case <-timer.C:
		t.Fatalf("%s: no permissions violation for %q within 5s: the server allowed it", uc.User, subject)
	}
}

// denyPublish publishes to subject and requires the server to refuse it.
func (uc *userConn) denyPublish(t testing.TB, subject string) {
	t.Helper()
	if err := uc.PublishRequest(subject, uc.NewInbox(), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	uc.expectDenied(t, subject)
}

// denySubscribe subscribes to subject and requires the server to refuse it.
func (uc *userConn) denySubscribe(t testing.TB, subject string) {
	t.Helper()
	sub, err := uc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	uc.expectDenied(t, subject)
}

// assertNoViolations proves that nothing this connection did so far was
// refused. The server reports violations in order, so publishing one
// certain violation and seeing it come back first rules out earlier ones.
func (uc *userConn) assertNoViolations(t testing.TB) {
	t.Helper()
	sentinel := "procfleet.test.sentinel." + nuid.Next()
	if err := uc.Publish(sentinel, nil); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(5 * time.Second)
	defer timer.Stop()
	for {
		select {
		case err := <-uc.errs:
			if strings.Contains(err.Error(), sentinel) {
				return
			}
			t.Fatalf("%s: unexpected error from the server: %v", uc.User, err)
		case <-timer.C:
			t.Fatalf("%s: the sentinel publish was not refused within 5s", uc.User)
		}
	}
}

// testCtx is a context for one step of a test, ended with the test.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// shortCtx bounds a JetStream request the server is expected to drop: a
// refused request gets no answer, only a timeout.
func shortCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}
