package dispatcher_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// Tokens of the tests, one per right and one with all of them.
const (
	tokSubmit = "submit-token-0123456789"
	tokRead   = "read-token-0123456789ab"
	tokAdmin  = "admin-token-0123456789a"
	tokAll    = "all-rights-token-012345"
)

func testTokens() []dispatcher.HTTPToken {
	return []dispatcher.HTTPToken{
		{Token: tokSubmit, Rights: dispatcher.RightSubmit},
		{Token: tokRead, Rights: dispatcher.RightRead},
		{Token: tokAdmin, Rights: dispatcher.RightAdmin},
		{Token: tokAll, Rights: dispatcher.RightAll},
	}
}

// served is a running dispatcher.Serve with its HTTP API.
type served struct {
	URL string
	NC  *nats.Conn
}

// startServe runs dispatcher.Serve on nc (a fresh embedded server when nil)
// until the test ends and returns the HTTP API's base URL.
func startServe(t *testing.T, nc *nats.Conn, cfg dispatcher.ServeConfig) served {
	t.Helper()
	if nc == nil {
		nc = fleettest.StartServer(t).Connect(t)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	base := make(chan string, 1)
	ready := make(chan struct{})
	cfg.HTTPListening = func(u string) { base <- u }
	cfg.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dispatcher.Serve(ctx, nc, cfg) }()
	t.Cleanup(cancel)
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve ended at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("Serve not ready within 30s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return served{URL: <-base, NC: nc}
}

// serveAndTopology starts Serve with no agent, and returns it with the
// default queue's topology (for tests that store results and dead letters
// themselves) and a context that ends with the test.
func serveAndTopology(t *testing.T) (served, *queue.Topology, context.Context) {
	t.Helper()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{})
	c, err := dispatcher.NewClient(context.Background(), nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return s, c.Topology(), ctx
}

type reply struct {
	Status int
	Header http.Header
	Body   string
}

func call(t *testing.T, client *http.Client, method, url, token, body string, hdr ...string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return reply{Status: resp.StatusCode, Header: resp.Header, Body: string(b)}
}

// TestHTTPAuth pins the doors of the HTTP API: no token is 401 with a
// challenge, a token without the right is 403, the right token passes, and
// /healthz stays open. Jobs run through a real fleet.
func TestHTTPAuth(t *testing.T) {
	t.Parallel()
	f := fleettest.StartFleet(t, fleettest.FleetConfig{})
	s := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{HTTPTokens: testTokens()})
	job := `{"job":{"id":"auth-1","command":"echo","payload":{"secret":"s3"}}}`

	for _, tc := range []struct {
		name, method, path, token, body string
		want                            int
		challenge                       string // in WWW-Authenticate
	}{
		{"submit without token", "POST", "/v1/jobs", "", job, 401, `Bearer realm="procfleet"`},
		{"submit with unknown token", "POST", "/v1/jobs", "not-a-token-at-all-xx", job, 401, `error="invalid_token"`},
		{"submit with basic auth", "POST", "/v1/jobs", "", job, 401, `error="invalid_request"`},
		{"submit with read token", "POST", "/v1/jobs", tokRead, job, 403, `error="insufficient_scope", scope="submit"`},
		{"submit with admin token", "POST", "/v1/jobs", tokAdmin, job, 403, `scope="submit"`},
		{"result without token", "GET", "/v1/results/auth-1", "", "", 401, "Bearer"},
		{"result with submit token", "GET", "/v1/results/auth-1", tokSubmit, "", 403, `scope="read"`},
		{"status with submit token", "GET", "/v1/status", tokSubmit, "", 403, `scope="read"`},
		{"dlq with read token", "GET", "/v1/dlq", tokRead, "", 403, `scope="admin"`},
		{"replay with submit token", "POST", "/v1/dlq/1/replay", tokSubmit, "", 403, `scope="admin"`},
		{"replay without token", "POST", "/v1/dlq/1/replay", "", "", 401, "Bearer"},
		{"healthz needs no token", "GET", "/healthz", "", "", 200, ""},
	} {
		var hdr []string
		if tc.name == "submit with basic auth" {
			hdr = []string{"Authorization", "Basic YTpi"}
		}
		r := call(t, nil, tc.method, s.URL+tc.path, tc.token, tc.body, hdr...)
		if r.Status != tc.want {
			t.Errorf("%s: status %d, want %d (%s)", tc.name, r.Status, tc.want, r.Body)
		}
		if got := r.Header.Get("WWW-Authenticate"); !strings.Contains(got, tc.challenge) || (tc.challenge == "") != (got == "") {
			t.Errorf("%s: WWW-Authenticate %q, want one containing %q", tc.name, got, tc.challenge)
		}
	}
	// Nothing refused above reached the queue.
	if r := call(t, nil, "GET", s.URL+"/v1/results/auth-1", tokRead, ""); r.Status != 404 {
		t.Fatalf("a refused submit left a result: %d %s", r.Status, r.Body)
	}

	// The right tokens work, end to end through an agent.
	if r := call(t, nil, "POST", s.URL+"/v1/jobs", tokSubmit, job, "Content-Type", "application/json"); r.Status != 200 || !strings.Contains(r.Body, `"id":"auth-1"`) {
		t.Fatalf("submit with the submit token: %d %s", r.Status, r.Body)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		r := call(t, nil, "GET", s.URL+"/v1/results/auth-1", tokRead, "")
		if r.Status == 200 {
			var res queue.Result
			if err := json.Unmarshal([]byte(r.Body), &res); err != nil || !res.OK || string(res.Result) != `{"secret":"s3"}` {
				t.Fatalf("result: %s (%v)", r.Body, err)
			}
			if r.Header.Get("Cache-Control") != "no-store" {
				t.Errorf("a result (secrets inside) may be cached: Cache-Control %q", r.Header.Get("Cache-Control"))
			}
			break
		}
		if r.Status != 404 || time.Now().After(deadline) {
			t.Fatalf("result: %d %s", r.Status, r.Body)
		}
		time.Sleep(50 * time.Millisecond) // poll interval
	}
	for _, tok := range []string{tokRead, tokAll} {
		if r := call(t, nil, "GET", s.URL+"/v1/status", tok, ""); r.Status != 200 {
			t.Errorf("status with %s: %d %s", tok, r.Status, r.Body)
		}
	}
	if r := call(t, nil, "GET", s.URL+"/v1/dlq", tokAdmin, ""); r.Status != 200 || strings.TrimSpace(r.Body) != "[]" {
		t.Errorf("dlq list with the admin token: %d %s", r.Status, r.Body)
	}
	if r := call(t, nil, "POST", s.URL+"/v1/dlq/999/replay", tokAdmin, ""); r.Status != 404 {
		t.Errorf("replay of a missing dead letter with the admin token: %d %s, want 404", r.Status, r.Body)
	}
}

// TestHTTPTokenNotInURL: a token in the query string is refused outright,
// even a valid one, so that nobody learns to put it in logged URLs.
func TestHTTPTokenNotInURL(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPTokens: testTokens()})
	for _, q := range []string{"access_token", "token"} {
		r := call(t, nil, "GET", s.URL+"/v1/status?"+q+"="+tokAll, "", "")
		if r.Status != 400 || !strings.Contains(r.Body, "Authorization") {
			t.Errorf("?%s=: %d %s, want 400 naming the header", q, r.Status, r.Body)
		}
	}
}

// TestHTTPCrossOrigin: no CORS, and without a token only loopback host
// names are answered (a page that rebinds its DNS name to 127.0.0.1 is not).
func TestHTTPCrossOrigin(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if r := call(t, nil, "GET", s.URL+"/v1/status", "", ""); r.Status != 200 {
		t.Fatalf("open loopback API: %d %s", r.Status, r.Body)
	}
	r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"command":"echo"}}`, "Origin", "https://evil.example")
	if r.Status != 403 || r.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("cross-origin submit: %d %s, want 403 and no CORS header", r.Status, r.Body)
	}
	if r := call(t, nil, "GET", s.URL+"/v1/status", "", "", "Origin", "http://"+u.Host); r.Status != 200 {
		t.Errorf("same-origin request: %d %s", r.Status, r.Body)
	}
	req, err := http.NewRequest("GET", s.URL+"/v1/status", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "rebound.example:" + u.Port()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Errorf("Host rebound.example without a token: %d, want 403", resp.StatusCode)
	}
}

// TestHTTPListenRules: a bare :PORT binds loopback; a non-loopback address
// without a token is refused before anything listens; with a token it is
// allowed.
func TestHTTPListenRules(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPAddr: ":0"})
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
		t.Fatalf(":0 listens on %s, want 127.0.0.1", u.Host)
	}

	nc := fleettest.StartServer(t).Connect(t)
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "192.0.2.1:0"} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := dispatcher.Serve(ctx, nc, dispatcher.ServeConfig{HTTPAddr: addr})
		cancel()
		if !errors.Is(err, dispatcher.ErrHTTPConfig) || !strings.Contains(err.Error(), "token") {
			t.Errorf("Serve on %s without a token: err = %v, want ErrHTTPConfig naming the token", addr, err)
		}
	}

	// Half a TLS pair, or a bad token, stops Serve before it starts.
	for _, cfg := range []dispatcher.ServeConfig{
		{HTTPAddr: "127.0.0.1:0", HTTPTLSCert: "cert.pem"},
		{HTTPAddr: "127.0.0.1:0", HTTPTokens: []dispatcher.HTTPToken{{Token: "short", Rights: dispatcher.RightAll}}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := dispatcher.Serve(ctx, nc, cfg)
		cancel()
		if err == nil {
			t.Errorf("Serve(%+v) started", cfg)
		}
	}
}

// TestHTTPS serves the API over TLS with a test certificate.
func TestHTTPS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, pool := testCert(t)
	s := startServe(t, nil, dispatcher.ServeConfig{HTTPTokens: testTokens(), HTTPTLSCert: certFile, HTTPTLSKey: keyFile})
	if !strings.HasPrefix(s.URL, "https://") {
		t.Fatalf("URL %s, want https", s.URL)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	t.Cleanup(client.CloseIdleConnections)
	if r := call(t, client, "GET", s.URL+"/v1/status", tokRead, ""); r.Status != 200 {
		t.Fatalf("https status: %d %s", r.Status, r.Body)
	}
	if r := call(t, client, "GET", s.URL+"/v1/status", "", ""); r.Status != 401 {
		t.Fatalf("https without a token: %d, want 401", r.Status)
	}
	// Plain HTTP to the TLS port gets no API.
	plain := "http://" + strings.TrimPrefix(s.URL, "https://")
	if r := call(t, nil, "GET", plain+"/v1/status", tokRead, ""); r.Status == 200 {
		t.Fatal("plain HTTP answered on the HTTPS port")
	}
}

// testCert writes a self-signed certificate for 127.0.0.1.
func testCert(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "procfleet test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestHTTPStatusCodes: 4xx for what the caller must change, 503 only for
// what may pass.
func TestHTTPStatusCodes(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	nc := srv.Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{})
	max := int(nc.MaxPayload())
	// A result that is not an envelope: a fault of ours, not the caller's,
	// and its detail stays in the log.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "fleet.result.corrupt-1", []byte("not an envelope")); err != nil {
		t.Fatal(err)
	}
	bigPayload := func(n int) string {
		return `{"job":{"command":"echo","payload":"` + strings.Repeat("x", n) + `"}}`
	}
	for _, tc := range []struct {
		name, method, path, body string
		want                     int
		says                     string
	}{
		{"bad result id", "GET", "/v1/results/a.b", "", 400, "job id"},
		{"wildcard result id", "GET", "/v1/results/a*", "", 400, "job id"},
		{"unknown result", "GET", "/v1/results/never-submitted", "", 404, "no result"},
		{"corrupt result", "GET", "/v1/results/corrupt-1", "", 500, `"internal error (see the dispatcher's log)"`},
		{"malformed JSON", "POST", "/v1/jobs", `{"job":`, 400, "bad request"},
		{"not an object", "POST", "/v1/jobs", `[1,2]`, 400, "bad request"},
		{"two values", "POST", "/v1/jobs", `{"job":{"command":"echo"}} {}`, 400, "more than one"},
		{"misspelt field", "POST", "/v1/jobs", `{"sesion":"s1","job":{"command":"echo"}}`, 400, "sesion"},
		{"missing job", "POST", "/v1/jobs", `{"session":"s1"}`, 400, "missing job"},
		{"job without command", "POST", "/v1/jobs", `{"job":{"id":"j1"}}`, 400, "command"},
		{"bad job id", "POST", "/v1/jobs", `{"job":{"id":"a.b","command":"echo"}}`, 400, "job id"},
		{"bad session", "POST", "/v1/jobs", `{"session":"s.>","job":{"command":"echo"}}`, 400, "session"},
		{"body over the limit", "POST", "/v1/jobs", bigPayload(max + 64<<10), 413, "max payload"},
		{"job over max payload", "POST", "/v1/jobs", sizedJob(max - 60), 413, "maximum payload"},
		{"bad dlq sequence", "POST", "/v1/dlq/x/replay", "", 400, "sequence"},
		{"zero dlq sequence", "POST", "/v1/dlq/0/replay", "", 400, "sequence"},
		{"missing dead letter", "POST", "/v1/dlq/7/replay", "", 404, "dead letter"},
		{"bad dlq limit", "GET", "/v1/dlq?limit=-1", "", 400, "limit"},
		{"good job", "POST", "/v1/jobs", `{"session":"s1","job":{"id":"ok-1","command":"echo"}}`, 200, `"id":"ok-1"`},
		{"duplicate job", "POST", "/v1/jobs", `{"session":"s1","job":{"id":"ok-1","command":"echo"}}`, 200, `"duplicate":true`},
	} {
		r := call(t, nil, tc.method, s.URL+tc.path, "", tc.body)
		if r.Status != tc.want || !strings.Contains(r.Body, tc.says) {
			t.Errorf("%s: %d %.300s; want %d saying %q", tc.name, r.Status, r.Body, tc.want, tc.says)
		}
		if tc.want >= 400 && r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: error as %q, want JSON", tc.name, r.Header.Get("Content-Type"))
		}
	}

	// What may pass is 503, with Retry-After: here NATS is gone.
	nc.Close()
	for _, p := range []string{"/v1/status", "/v1/results/ok-1", "/healthz"} {
		r := call(t, nil, "GET", s.URL+p, "", "")
		if r.Status != 503 {
			t.Errorf("%s without NATS: %d %s, want 503", p, r.Status, r.Body)
		}
		if p != "/healthz" && r.Header.Get("Retry-After") == "" {
			t.Errorf("%s without NATS: no Retry-After", p)
		}
	}
	r := call(t, nil, "POST", s.URL+"/v1/jobs", "", `{"job":{"command":"echo"}}`)
	if r.Status != 503 {
		t.Errorf("submit without NATS: %d %s, want 503", r.Status, r.Body)
	}
}

func TestParseHTTPTokens(t *testing.T) {
	t.Parallel()
	good := fmt.Sprintf("# comment\n\n%s submit   # producer\n%s read,admin\n", tokSubmit, tokRead)
	toks, err := dispatcher.ParseHTTPTokens(strings.NewReader(good), "tokens")
	if err != nil {
		t.Fatal(err)
	}
	want := []dispatcher.HTTPToken{{Token: tokSubmit, Rights: dispatcher.RightSubmit}, {Token: tokRead, Rights: dispatcher.RightRead | dispatcher.RightAdmin}}
	if fmt.Sprint(toks) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", toks, want)
	}
	for _, tc := range []struct{ name, text, says string }{
		{"empty", "# nothing\n", "no token"},
		{"no rights", tokSubmit + "\n", "tokens:1"},
		{"unknown right", tokSubmit + " write\n", `unknown right "write"`},
		{"short", "abc submit\n", "at least 16"},
		{"short, padded", "A=============== read\n", "at least 16"},
		{"bad characters", "token-with-a-quote\"-in-it submit\n", "letters, digits"},
		{"twice", tokSubmit + " submit\n" + tokSubmit + " read\n", "line 1 again"},
		{"three fields", tokSubmit + " submit read\n", "tokens:1"},
	} {
		_, err := dispatcher.ParseHTTPTokens(strings.NewReader(tc.text), "tokens")
		if !errors.Is(err, dispatcher.ErrBadToken) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err = %v, want ErrBadToken saying %q", tc.name, err, tc.says)
		}
	}
	if _, err := dispatcher.ReadHTTPTokenFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

// sizedJob is a submit request of exactly size bytes whose job, once
// published with its Nats-Msg-Id header, is bigger than the request: fit
// the request just under the server's max payload and the job is over it.
func sizedJob(size int) string {
	head := `{"job":{"id":"` + strings.Repeat("i", 128) + `","command":"echo","payload":"`
	tail := `"}}`
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

// TestSubmitMicroCodes: the NATS API answers with the same codes.
func TestSubmitMicroCodes(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	for _, tc := range []struct{ body, want string }{
		{`{"job":`, "400"},
		{`{"job":{"id":"a.b","command":"echo"}}`, "400"},
		{sizedJob(int(s.NC.MaxPayload()) - 60), "413"},
	} {
		msg, err := s.NC.Request("fleet.api.submit", []byte(tc.body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := msg.Header.Get("Nats-Service-Error-Code"); got != tc.want {
			t.Errorf("%.40s...: code %q (%s), want %s", tc.body, got, msg.Header.Get("Nats-Service-Error"), tc.want)
		}
	}
}

// TestHTTPHeaderLimit: oversized request headers are refused before any
// handler runs.
func TestHTTPHeaderLimit(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	r := call(t, nil, "GET", s.URL+"/v1/status", "", "", "X-Filler", strings.Repeat("f", 128<<10))
	if r.Status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("128 KiB of headers: %d, want 431", r.Status)
	}
	if r := call(t, nil, "GET", s.URL+"/v1/status", "", "", "X-Filler", strings.Repeat("f", 16<<10)); r.Status != 200 {
		t.Fatalf("16 KiB of headers: %d, want 200", r.Status)
	}
}
