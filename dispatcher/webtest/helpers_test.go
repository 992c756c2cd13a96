package webtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/dispatcher"
)

// Tokens of the tests.
const (
	tokRead  = "read-token-0123456789ab"
	tokAdmin = "admin-token-0123456789a"
	tokAll   = "all-rights-token-012345"
)

func testTokens() []dispatcher.HTTPToken {
	return []dispatcher.HTTPToken{
		{Token: tokRead, Rights: dispatcher.RightRead},
		{Token: tokAdmin, Rights: dispatcher.RightAdmin},
		{Token: tokAll, Rights: dispatcher.RightAll},
	}
}

// startServe runs dispatcher.Serve on nc with HTTP on a free loopback port
// until the test ends, and returns the base URL.
func startServe(t *testing.T, nc *nats.Conn, cfg dispatcher.ServeConfig) string {
	t.Helper()
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.ErrorLevel))
	base := make(chan string, 1)
	ready := make(chan struct{})
	cfg.HTTPListening = func(u string) { base <- u }
	cfg.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- dispatcher.Serve(ctx, nc, cfg) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("Serve ended at start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("Serve not ready within 30s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return <-base
}

// chromiumPath finds Chromium. A missing browser fails the test with what
// to install; only PROCFLEET_NO_BROWSER=1, set by hand on a developer
// machine, skips it (never set in CI).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if os.Getenv("PROCFLEET_NO_BROWSER") == "1" {
		t.Skip("PROCFLEET_NO_BROWSER=1: the browser test is skipped on this developer machine (never in CI)")
	}
	if p := os.Getenv("PROCFLEET_CHROMIUM"); p != "" {
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			t.Fatalf("PROCFLEET_CHROMIUM=%s is not an executable Chromium (%v): the dashboard's browser test needs one", p, err)
		}
		return p
	}
	for _, name := range []string{"/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("Chromium is not installed: the dashboard's browser test needs it. Install it " +
		"(Debian: apt-get install -y chromium; .ci/run does), point PROCFLEET_CHROMIUM at a binary, " +
		"or set PROCFLEET_NO_BROWSER=1 on a developer machine to skip this test (never in CI)")
	return ""
}

// browser starts a headless Chromium that lives until the test ends.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath(t)
	// chromedp's defaults (headless, no first run, no background
	// networking, no sync, ...) plus what a CI container needs.
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 860),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	// Start the browser now, so a broken install fails here, clearly.
	if err := chromedp.Do(bctx); err != nil {
		cancelB()
		cancelA()
		t.Fatalf("starting Chromium (%s): %v", path, err)
	}
	t.Cleanup(func() {
		cancelB()
		cancelA()
	})
	return bctx
}

// run runs browser actions with a bound.
func run(t *testing.T, bctx context.Context, d time.Duration, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JS expression in the page.
func eval[T any](bctx context.Context, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(bctx, 5*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr))
}

// get does one HTTP request and returns the status and body.
func get(t *testing.T, method, url, token string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

func getJSON(t *testing.T, url, token string, v any) int {
	t.Helper()
	code, body, _ := get(t, http.MethodGet, url, token)
	if code == http.StatusOK {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			t.Fatalf("GET %s: %v in %s", url, err, body)
		}
	}
	return code
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
