package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrAuthFlags is wrapped by every error Auth.Options returns; the message
// names the flag at fault. File errors also wrap the underlying error, so
// errors.Is(err, fs.ErrNotExist) works.
var ErrAuthFlags = errors.New("cli: invalid NATS auth flags")

// Auth holds how a program proves who it is to NATS and how it checks the
// server. Register adds its flags; every one also reads PROCFLEET_<FLAG>
// through ApplyEnv (PROCFLEET_USER, PROCFLEET_PASSWORD, PROCFLEET_TLS_CA,
// ...). The zero value means no credentials and no TLS.
type Auth struct {
	// User and Password authenticate as a configured user. Default "": none.
	// Both or neither.
	User     string
	Password string

	// Token authenticates with a server-wide token. Default "": none.
	Token string

	// NKeyFile is a file holding a user nkey seed (SU...). Default "": none.
	NKeyFile string

	// CredsFile is a .creds file (user JWT plus seed) for operator mode.
	// Default "": none. It is re-read on every (re)connect, so a rotated
	// file takes effect without a restart.
	CredsFile string

	// TLSCA is a PEM bundle of CAs that verify the server. Default "": the
	// system roots (TLS is then only used if another TLS flag is set or the
	// URL is tls://).
	TLSCA string

	// TLSCert and TLSKey are the client certificate and key for servers that
	// verify clients (mTLS). Default "": none. Both or neither; the files
	// are re-read on every handshake so that rotated certificates are used
	// after a reconnect.
	TLSCert string
	TLSKey  string
	// InboxPrefix is the prefix of the subjects replies come back on: JetStream
	// API answers, pulled jobs, publish acks, request replies. Default "":
	// nats.go's "_INBOX". A server that confines each user to its own
	// inboxes (deploy/nats-server.conf: _INBOX_dispatcher, _INBOX_agent,
	// _INBOX_client) needs the matching prefix here.
	InboxPrefix string
}

// Register adds --user, --password, --token, --nkey, --creds, --tls-ca,
// --tls-cert, --tls-key and --inbox-prefix to fs.
func (a *Auth) Register(fs *flag.FlagSet) {
	fs.StringVar(&a.User, "user", a.User, "NATS user name (with --password)")
	fs.StringVar(&a.Password, "password", a.Password, "NATS password (prefer PROCFLEET_PASSWORD: flags are visible in ps)")
	fs.StringVar(&a.Token, "token", a.Token, "NATS auth token (prefer PROCFLEET_TOKEN)")
	fs.StringVar(&a.NKeyFile, "nkey", a.NKeyFile, "file holding a NATS user nkey seed")
	fs.StringVar(&a.CredsFile, "creds", a.CredsFile, "NATS user credentials file (.creds: JWT plus seed)")
	fs.StringVar(&a.TLSCA, "tls-ca", a.TLSCA, "PEM file of CAs that verify the NATS server (enables TLS)")
	fs.StringVar(&a.TLSCert, "tls-cert", a.TLSCert, "client certificate PEM for mutual TLS (with --tls-key)")
	fs.StringVar(&a.TLSKey, "tls-key", a.TLSKey, "client private key PEM for mutual TLS (with --tls-cert)")
	fs.StringVar(&a.InboxPrefix, "inbox-prefix", a.InboxPrefix,
		"subject prefix of this program's reply inboxes, e.g. _INBOX_agent when the server confines each user to its own (default _INBOX)")
}

// Options validates the flags and returns the nats.go options they stand
// for, or none when no flag is set. Files are read now, so that a typo fails
// at start-up with the flag's name rather than as a refused connection.
func (a *Auth) Options() ([]nats.Option, error) {
	switch {
	case a.User != "" && a.Password == "":
		return nil, fmt.Errorf("%w: --user %q needs --password", ErrAuthFlags, a.User)
	case a.Password != "" && a.User == "":
		return nil, fmt.Errorf("%w: --password needs --user", ErrAuthFlags)
	}
	// The server takes one identity per connection; given two, which one
	// nats.go sends would be an accident of its internals.
	var methods []string
	for _, m := range []struct {
		set  bool
		name string
	}{{a.User != "", "--user/--password"}, {a.Token != "", "--token"}, {a.NKeyFile != "", "--nkey"}, {a.CredsFile != "", "--creds"}} {
		if m.set {
			methods = append(methods, m.name)
		}
	}
	if len(methods) > 1 {
		return nil, fmt.Errorf("%w: %s are mutually exclusive; choose one way to authenticate",
			ErrAuthFlags, strings.Join(methods, " and "))
	}

	var opts []nats.Option
	if a.InboxPrefix != "" {
		if !validInboxPrefix(a.InboxPrefix) {
			return nil, fmt.Errorf("%w: --inbox-prefix %q must be a subject without wildcards, e.g. _INBOX_agent", ErrAuthFlags, a.InboxPrefix)
		}
		opts = append(opts, nats.CustomInboxPrefix(a.InboxPrefix))
	}
	switch {
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	case a.Token != "":
		opts = append(opts, nats.Token(a.Token))
	case a.NKeyFile != "":
		if _, err := os.ReadFile(a.NKeyFile); err != nil {
			return nil, fmt.Errorf("%w: --nkey: %w", ErrAuthFlags, err)
		}
		o, err := nats.NkeyOptionFromSeed(a.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --nkey %s: %w", ErrAuthFlags, a.NKeyFile, err)
		}
		opts = append(opts, o)
	case a.CredsFile != "":
		data, err := os.ReadFile(a.CredsFile)
		if err != nil {
			return nil, fmt.Errorf("%w: --creds: %w", ErrAuthFlags, err)
		}
		if len(strings.TrimSpace(string(data))) == 0 {
			return nil, fmt.Errorf("%w: --creds %s is empty", ErrAuthFlags, a.CredsFile)
		}
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	}

	tlsOpt, err := a.tlsOption()
	if err != nil {
		return nil, err
	}
	if tlsOpt != nil {
		opts = append(opts, tlsOpt)
	}
	return opts, nil
}

func (a *Auth) tlsOption() (nats.Option, error) {
	switch {
	case a.TLSCert != "" && a.TLSKey == "":
		return nil, fmt.Errorf("%w: --tls-cert needs --tls-key", ErrAuthFlags)
	case a.TLSKey != "" && a.TLSCert == "":
		return nil, fmt.Errorf("%w: --tls-key needs --tls-cert", ErrAuthFlags)
	case a.TLSCA == "" && a.TLSCert == "":
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if a.TLSCA != "" {
		pem, err := os.ReadFile(a.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("%w: --tls-ca: %w", ErrAuthFlags, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: --tls-ca %s holds no PEM certificate", ErrAuthFlags, a.TLSCA)
		}
		cfg.RootCAs = pool
	}
	if a.TLSCert != "" {
		first, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("%w: --tls-cert %s / --tls-key %s: %w", ErrAuthFlags, a.TLSCert, a.TLSKey, err)
		}
		certFile, keyFile := a.TLSCert, a.TLSKey
		// Re-read on each handshake: long-lived agents outlive short-lived
		// certificates (cert-manager, Vault), and a reconnect should present
		// the current one. A pair that does not load (caught mid-rotation)
		// falls back to the one read at start-up rather than failing the
		// reconnect outright.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c, err := tls.LoadX509KeyPair(certFile, keyFile); err == nil {
				return &c, nil
			}
			return &first, nil
		}
	}
	return nats.Secure(cfg), nil
}

// validInboxPrefix reports whether p is a literal subject: dot-separated
// non-empty tokens without wildcards or white space.
func validInboxPrefix(p string) bool {
	for _, tok := range strings.Split(p, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return false
		}
	}
	return true
}

// ErrInboxDenied is wrapped by CheckInbox when the server refuses the
// connection's reply inboxes.
var ErrInboxDenied = errors.New("cli: the NATS server refuses this user its reply inboxes")

// CheckInbox proves that the server lets nc receive replies under its inbox
// prefix. Without that every request (JetStream included) would only time
// out; with it, a wrong or missing --inbox-prefix fails at start-up, named.
func CheckInbox(nc *nats.Conn, timeout time.Duration) error {
	subject := nc.NewInbox()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return fmt.Errorf("cli: subscribe to inbox %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The server answers a refused subscription before the flush's PONG,
	// and the connection records it before Flush returns.
	if err := nc.FlushTimeout(timeout); err != nil {
		return fmt.Errorf("cli: flush after inbox subscription: %w", err)
	}
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subject) {
		prefix := nc.Opts.InboxPrefix
		if prefix == "" {
			prefix = strings.TrimSuffix(nats.InboxPrefix, ".")
		}
		return fmt.Errorf("%w: may not subscribe to %s.>; set --inbox-prefix (PROCFLEET_INBOX_PREFIX) to the prefix "+
			"the server allows this user (deploy/nats-server.conf: _INBOX_<user>)", ErrInboxDenied, prefix)
	}
	return nil
}
