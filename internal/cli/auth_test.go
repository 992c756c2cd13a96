package cli_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/internal/cli"
)

// startServer runs an embedded server with base as its configuration.
func startServer(t *testing.T, base *server.Options) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, url, err := embedded.Start(ctx, embedded.Config{
		StoreDir: t.TempDir(),
		Options:  base,
		Logger:   zaptest.NewLogger(t).Named("nats-server"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return url
}

// connect parses args into a fresh Auth and dials url with its options.
func connect(t *testing.T, url string, args ...string) (*nats.Conn, error) {
	t.Helper()
	var a cli.Auth
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	a.Register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	opts, err := a.Options()
	if err != nil {
		t.Fatalf("Options(%v): %v", args, err)
	}
	// No reconnect loop: a refused connection must fail at once.
	opts = append(opts, nats.Timeout(5*time.Second), nats.NoReconnect())
	nc, err := nats.Connect(url, opts...)
	if err == nil {
		t.Cleanup(nc.Close)
	}
	return nc, err
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAuthUserPassword(t *testing.T) {
	t.Parallel()
	url := startServer(t, &server.Options{Username: "agent", Password: "s3cret-pw"})

	nc, err := connect(t, url, "--user", "agent", "--password", "s3cret-pw")
	if err != nil {
		t.Fatalf("right password refused: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	if _, err := connect(t, url, "--user", "agent", "--password", "wrong"); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("wrong password: err = %v, want nats.ErrAuthorization", err)
	}
	if _, err := connect(t, url); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("no credentials: err = %v, want nats.ErrAuthorization", err)
	}
}

func TestAuthToken(t *testing.T) {
	t.Parallel()
	url := startServer(t, &server.Options{Authorization: "tok-123"})

	if _, err := connect(t, url, "--token", "tok-123"); err != nil {
		t.Fatalf("right token refused: %v", err)
	}
	if _, err := connect(t, url, "--token", "tok-999"); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("wrong token: err = %v, want nats.ErrAuthorization", err)
	}
}

func TestAuthNKey(t *testing.T) {
	t.Parallel()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	url := startServer(t, &server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}})

	if _, err := connect(t, url, "--nkey", writeFile(t, "user.nk", string(seed)+"\n")); err != nil {
		t.Fatalf("nkey refused: %v", err)
	}

	other, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	otherSeed, err := other.Seed()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, url, "--nkey", writeFile(t, "other.nk", string(otherSeed))); !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("unknown nkey: err = %v, want nats.ErrAuthorization", err)
	}
}

// TestAuthEnv checks that the flags come from PROCFLEET_* through cli.Parse.
// Not parallel: it sets the environment.
func TestAuthEnv(t *testing.T) {
	t.Setenv("PROCFLEET_USER", "client")
	t.Setenv("PROCFLEET_PASSWORD", "from-env")
	t.Setenv("PROCFLEET_TLS_CA", "/etc/procfleet/ca.pem")

	var a cli.Auth
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	a.Register(fs)
	if err := cli.Parse(fs, []string{"--password", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	want := cli.Auth{User: "client", Password: "from-flag", TLSCA: "/etc/procfleet/ca.pem"}
	if a != want {
		t.Fatalf("got %+v, want %+v (a flag beats its variable)", a, want)
	}
}

func TestAuthOptionsErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	notPEM := writeFile(t, "not.pem", "hello\n")
	empty := writeFile(t, "empty.creds", "  \n")
	badSeed := writeFile(t, "bad.nk", "SUNOTASEED\n")

	tests := []struct {
		name     string
		auth     cli.Auth
		wantErr  error  // besides cli.ErrAuthFlags, which every case wraps
		wantText string // the flag the message must name
	}{
		{"user without password", cli.Auth{User: "agent"}, nil, "--password"},
		{"password without user", cli.Auth{Password: "x"}, nil, "--user"},
		{"user and token", cli.Auth{User: "a", Password: "b", Token: "t"}, nil, "--token"},
		{"token and nkey", cli.Auth{Token: "t", NKeyFile: badSeed}, nil, "mutually exclusive"},
		{"nkey unreadable", cli.Auth{NKeyFile: missing}, fs.ErrNotExist, "--nkey"},
		{"nkey not a seed", cli.Auth{NKeyFile: badSeed}, nil, "--nkey"},
		{"creds unreadable", cli.Auth{CredsFile: missing}, fs.ErrNotExist, "--creds"},
		{"creds empty", cli.Auth{CredsFile: empty}, nil, "--creds"},
		{"tls-cert without tls-key", cli.Auth{TLSCert: notPEM}, nil, "--tls-key"},
		{"tls-key without tls-cert", cli.Auth{TLSKey: notPEM}, nil, "--tls-cert"},
		{"tls-ca unreadable", cli.Auth{TLSCA: missing}, fs.ErrNotExist, "--tls-ca"},
		{"tls-ca not PEM", cli.Auth{TLSCA: notPEM}, nil, "--tls-ca"},
		{"tls pair not PEM", cli.Auth{TLSCert: notPEM, TLSKey: notPEM}, nil, "--tls-cert"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts, err := tt.auth.Options()
			if !errors.Is(err, cli.ErrAuthFlags) {
				t.Fatalf("err = %v (opts %d), want cli.ErrAuthFlags", err, len(opts))
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want it to wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("err = %q, want it to mention %q", err, tt.wantText)
			}
		})
	}

	t.Run("zero value adds nothing", func(t *testing.T) {
		t.Parallel()
		var a cli.Auth
		opts, err := a.Options()
		if err != nil || len(opts) != 0 {
			t.Fatalf("Options() = %d options, %v; want none, nil", len(opts), err)
		}
	})
}

// pki is a throwaway CA with a server certificate for 127.0.0.1 and a client
// certificate, written as PEM files.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
}

func newPKI(t *testing.T) pki {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "procfleet test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) (certFile, keyFile string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile = writePEM(t, dir, cn+".pem", "CERTIFICATE", der)
		keyFile = writePEM(t, dir, cn+"-key.pem", "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p := pki{caFile: writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = issue(2, "server", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = issue(3, "client", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func tlsServer(t *testing.T, p pki, verifyClients bool) string {
	t.Helper()
	tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.caFile, Verify: verifyClients,
	})
	if err != nil {
		t.Fatal(err)
	}
	return startServer(t, &server.Options{TLS: true, TLSConfig: tc, TLSVerify: verifyClients, TLSTimeout: 5})
}

func TestAuthTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	url := tlsServer(t, p, false)

	nc, err := connect(t, url, "--tls-ca", p.caFile)
	if err != nil {
		t.Fatalf("--tls-ca refused: %v", err)
	}
	if !nc.TLSRequired() {
		t.Fatal("connection is not TLS")
	}
	if _, err := nc.TLSConnectionState(); err != nil {
		t.Fatalf("no TLS state: %v", err)
	}

	// Without the CA the server's certificate cannot be verified.
	_, err = connect(t, url, "--tls-ca", newPKI(t).caFile)
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("foreign CA: err = %v, want x509.UnknownAuthorityError", err)
	}
}

func TestAuthMutualTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	url := tlsServer(t, p, true)

	nc, err := connect(t, url, "--tls-ca", p.caFile, "--tls-cert", p.clientCert, "--tls-key", p.clientKey)
	if err != nil {
		t.Fatalf("client certificate refused: %v", err)
	}
	state, err := nc.TLSConnectionState()
	if err != nil {
		t.Fatal(err)
	}
	if state.Version < tls.VersionTLS12 {
		t.Fatalf("TLS version %x, want at least 1.2", state.Version)
	}

	// The server verifies clients: one without a certificate is turned away.
	if _, err := connect(t, url, "--tls-ca", p.caFile); err == nil {
		t.Fatal("connected without a client certificate to a server that verifies clients")
	}
}

// TestInboxPrefix: with --inbox-prefix a program gets its replies on the
// inbox the server allows it, and without it CheckInbox (and Connect) say
// what is wrong instead of letting every request time out.
func TestInboxPrefix(t *testing.T) {
	t.Parallel()
	confined := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{">"}},
		Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_agent.>"}, Deny: []string{"_INBOX.>"}},
	}
	url := startServer(t, &server.Options{Users: []*server.User{
		{Username: "agent", Password: "agent-pw", Permissions: confined},
		{Username: "echo", Password: "echo-pw"},
	}})
	echo, err := connect(t, url, "--user", "echo", "--password", "echo-pw")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := echo.Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := echo.Flush(); err != nil {
		t.Fatal(err)
	}

	nc, err := connect(t, url, "--user", "agent", "--password", "agent-pw", "--inbox-prefix", "_INBOX_agent")
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.CheckInbox(nc, 5*time.Second); err != nil {
		t.Fatalf("CheckInbox with the allowed prefix: %v", err)
	}
	if m, err := nc.Request("svc.echo", []byte("hi"), 5*time.Second); err != nil || string(m.Data) != "hi" {
		t.Fatalf("request with the allowed prefix: %v, %v", m, err)
	}

	nc, err = connect(t, url, "--user", "agent", "--password", "agent-pw")
	if err != nil {
		t.Fatal(err)
	}
	err = cli.CheckInbox(nc, 5*time.Second)
	if !errors.Is(err, cli.ErrInboxDenied) || !strings.Contains(err.Error(), "_INBOX.>") || !strings.Contains(err.Error(), "--inbox-prefix") {
		t.Fatalf("CheckInbox with the default prefix: err = %v, want ErrInboxDenied naming _INBOX.> and --inbox-prefix", err)
	}

	opts, err := (&cli.Auth{User: "agent", Password: "agent-pw"}).Options()
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := cli.Connect(url, "test", zaptest.NewLogger(t), append(opts, nats.NoReconnect())...); !errors.Is(err, cli.ErrInboxDenied) {
		if err == nil {
			nc.Close()
		}
		t.Fatalf("Connect with a refused inbox: err = %v, want ErrInboxDenied", err)
	}

	for _, bad := range []string{"_INBOX.*", "_INBOX.>", "a..b", "_INBOX.", "has space"} {
		if _, err := (&cli.Auth{InboxPrefix: bad}).Options(); !errors.Is(err, cli.ErrAuthFlags) || !strings.Contains(err.Error(), "--inbox-prefix") {
			t.Errorf("--inbox-prefix %q: err = %v, want ErrAuthFlags naming the flag", bad, err)
		}
	}
}
