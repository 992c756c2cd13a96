package webtest

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/sharedtest"
	"github.com/procfleet/procfleet/queue"
)

// TestDashboardAuth pins the doors of the page: without a token the page,
// its script and the dashboard's API answer 401; a session cookie with a
// read token opens the page; the API ignores that cookie (bearer only).
func TestDashboardAuth(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	base := startServe(t, srv.Connect(t), dispatcher.ServeConfig{HTTPTokens: testTokens()})

	code, body, hdr := get(t, http.MethodGet, base+"/", "")
	if code != http.StatusUnauthorized || !strings.Contains(body, `id="login-form"`) || strings.Contains(body, "app.js") {
		t.Fatalf("GET / without a token: %d, want 401 and the sign-in form only:\n%s", code, body)
	}
	if !strings.Contains(hdr.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Errorf("GET /: no content security policy: %q", hdr.Get("Content-Security-Policy"))
	}
	for _, path := range []string{"/v1/events", "/v1/jobs/j1", "/v1/failures", "/v1/status", "/v1/dlq"} {
		if code, _, _ := get(t, http.MethodGet, base+path, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401", path, code)
		}
	}
	if code, _, _ := get(t, http.MethodGet, base+"/ui/app.js", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /ui/app.js without a session: %d, want 401", code)
	}
	if code, _, _ := get(t, http.MethodPost, base+"/ui/login", "wrong-token-0123456789"); code != http.StatusUnauthorized {
		t.Errorf("POST /ui/login with a wrong token: %d, want 401", code)
	}
	if code, _, _ := get(t, http.MethodPost, base+"/ui/login", tokAdmin); code != http.StatusForbidden {
		t.Errorf("POST /ui/login with an admin-only token: %d, want 403 (the page needs read)", code)
	}
	code, _, hdr = get(t, http.MethodPost, base+"/ui/login", tokRead)
	cookie := hdr.Get("Set-Cookie")
	if code != http.StatusOK || !strings.Contains(cookie, "HttpOnly") || !strings.Contains(cookie, "SameSite=Strict") {
		t.Fatalf("POST /ui/login with a read token: %d, cookie %q", code, cookie)
	}
	sess := strings.SplitN(cookie, ";", 2)[0]
	if code, body, _ := get(t, http.MethodGet, base+"/", "", "Cookie", sess); code != http.StatusOK || !strings.Contains(body, "/ui/app.js") {
		t.Errorf("GET / with the session cookie: %d", code)
	}
	if code, _, _ := get(t, http.MethodGet, base+"/ui/app.js", "", "Cookie", sess); code != http.StatusOK {
		t.Errorf("GET /ui/app.js with the session cookie: %d", code)
	}
	if code, _, _ := get(t, http.MethodGet, base+"/v1/failures", "", "Cookie", sess); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/failures with only the cookie: %d, want 401 (the API takes bearer tokens only)", code)
	}
	if code, _, _ := get(t, http.MethodGet, base+"/v1/failures", tokRead); code != http.StatusOK {
		t.Errorf("GET /v1/failures with a read token: %d", code)
	}
}

// TestDashboardBrowser drives the page in Chromium against a fleet of two
// agents: sign in, agents and workers appear, counters move as jobs run, a
// job looked up by id shows its progress live before its result, and a dead
// letter is replayed from the page.
func TestDashboardBrowser(t *testing.T) {
	bctx := browser(t)
	f := fleettest.StartFleet(t, fleettest.FleetConfig{Agents: 2, Configure: func(i int, cfg *agent.Config) {
		cfg.Pool.Size = 2
	}})
	base := startServe(t, f.Server.Connect(t), dispatcher.ServeConfig{HTTPTokens: testTokens()})
	// One deadline for the fleet calls of the whole walk through the page,
	// which takes 15-25 s, and longer on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Sign in: the page answers 401 with the form; the token opens it.
	run(t, bctx, 20*time.Second, "sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), tokAll),
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS(`#agents tbody tr[data-agent="agent-1"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#agents tbody tr[data-agent="agent-2"]`)),
	)
	// Every worker appears, with its pid.
	waitJS(t, bctx, 15*time.Second, "four ready workers in the table",
		`[...document.querySelectorAll("#workers tbody tr")].filter(r => /^\d+$/.test(r.cells[3].textContent)).length >= 4`)

	// Counters move as jobs run.
	before, err := eval[string](bctx, `document.getElementById("c-results").textContent`)
	if err != nil {
		t.Fatal(err)
	}
	var subs []dispatcher.Submission
	for i := range 20 {
		subs = append(subs, dispatcher.Submission{Session: "s" + strconv.Itoa(i%4),
			Job: &queue.Job{ID: "echo-" + strconv.Itoa(i), Command: "echo", Payload: json.RawMessage(`{"n":1}`)}})
	}
	if err := f.Client.SubmitBatch(ctx, subs); err != nil {
		t.Fatal(err)
	}
	waitJS(t, bctx, 15*time.Second, "the results counter reaches 20 (it was "+before+")",
		`Number(document.getElementById("c-results").textContent.replace(/,/g, "")) >= 20`)
	waitJS(t, bctx, 10*time.Second, "the sessions counter counts the 4 sessions",
		`Number(document.getElementById("c-sessions").textContent) >= 4`)
	if os.Getenv("PROCFLEET_SCREENSHOTS") != "" {
		run(t, bctx, 5*time.Second, "queues tab", chromedp.Click(chromedp.CSS(`#tabs button[data-tab="queues"]`)))
		waitJS(t, bctx, 10*time.Second, "the chart drawn", `document.querySelectorAll("#chart path").length === 2`)
		shot(t, bctx, "queues")
	}

	// A job looked up by id: its progress arrives while it runs. The page
	// looks it up before it is submitted and follows it from then on, so a
	// slow browser cannot miss its one progress report (at half its run).
	run(t, bctx, 10*time.Second, "look up slow-1",
		chromedp.Click(chromedp.CSS(`#tabs button[data-tab="jobs"]`)),
		chromedp.SetValue(chromedp.CSS("#job-id"), "slow-1"),
		chromedp.Click(chromedp.CSS(`#job-form button[type="submit"]`)),
	)
	// The click replaced the page's event stream with one that follows
	// slow-1; a snapshot on it means the dispatcher listens for its events.
	if _, err := eval[bool](bctx, `(S.lastSnap = 0, true)`); err != nil {
		t.Fatal(err)
	}
	waitJS(t, bctx, 15*time.Second, "the page following slow-1, not yet submitted",
		`S.lastSnap > 0 && document.getElementById("job-state").textContent === "waiting"`)
	if _, err := f.Client.Submit(ctx, "slow", &queue.Job{ID: "slow-1", Command: "sleep", Payload: json.RawMessage(`{"MS":8000}`)}); err != nil {
		t.Fatal(err)
	}
	waitJS(t, bctx, 15*time.Second, "a progress event of slow-1",
		`document.querySelectorAll("#job-progress li").length > 0`)
	state, err := eval[string](bctx, `document.getElementById("job-state").textContent`)
	if err != nil {
		t.Fatal(err)
	}
	progress, err := eval[string](bctx, `document.getElementById("job-progress").textContent`)
	if err != nil {
		t.Fatal(err)
	}
	if state == "done" || !strings.Contains(progress, `"pct":50`) {
		t.Fatalf("progress %q with state %q: want the progress while the job still runs", progress, state)
	}
	waitJS(t, bctx, 20*time.Second, "slow-1 done with its attempt listed",
		`document.getElementById("job-state").textContent === "done" && document.querySelectorAll("#job-attempts tbody tr").length === 1`)
	shot(t, bctx, "jobs")

	// A dead letter, replayed from the page.
	if _, err := f.Client.Submit(ctx, "", &queue.Job{ID: "dead-1", Command: "retry", MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	sharedtest.Eventually(t, 15*time.Second, func() error {
		dl, err := f.Topology().DeadLetters(ctx, 10)
		if err != nil || len(dl) == 0 {
			return errorf("no dead letter yet (%v)", err)
		}
		return nil
	})
	// Its failed attempt is in the recent failures, filtered by kind.
	run(t, bctx, 10*time.Second, "recent failures",
		chromedp.Click(chromedp.CSS(`#tabs button[data-tab="jobs"]`)),
		chromedp.Click(chromedp.CSS("#fail-refresh")),
		chromedp.WaitReady(chromedp.CSS(`#fail-kind option[value="app"]`)),
		chromedp.SetValue(chromedp.CSS("#fail-kind"), "app"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById("fail-kind").dispatchEvent(new Event("change"))`),
	)
	waitJS(t, bctx, 10*time.Second, "dead-1 among the app failures",
		`[...document.querySelectorAll("#failures tbody tr")].some(r => r.textContent.includes("dead-1") && r.textContent.includes("app"))`)
	run(t, bctx, 10*time.Second, "open the dead letters",
		chromedp.Click(chromedp.CSS(`#tabs button[data-tab="dlq"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#dlq tbody tr[data-seq] button.replay`)),
	)
	cause, err := eval[string](bctx, `document.querySelector("#dlq tbody tr[data-seq]").textContent`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cause, "dead-1") || !strings.Contains(cause, "exhausted") {
		t.Fatalf("dead-letter row %q: want the job and its cause", cause)
	}
	run(t, bctx, 10*time.Second, "replay it",
		chromedp.Click(chromedp.CSS(`#dlq tbody tr[data-seq] button.replay`)),
	)
	waitJS(t, bctx, 10*time.Second, "the page reports the replay",
		`document.getElementById("dlq-msg").textContent.startsWith("replayed 1 of 1")`)
	// The replayed job ran again: a second attempt of dead-1.
	sharedtest.Eventually(t, 15*time.Second, func() error {
		var v dispatcher.JobView
		if code := getJSON(t, base+"/v1/jobs/dead-1", tokRead, &v); code != http.StatusOK {
			return errorf("GET /v1/jobs/dead-1: %d", code)
		}
		if len(v.Attempts) < 2 {
			return errorf("%d attempts of dead-1, want 2 after the replay", len(v.Attempts))
		}
		return nil
	})
	run(t, bctx, 5*time.Second, "fleet tab", chromedp.Click(chromedp.CSS(`#tabs button[data-tab="fleet"]`)))
	shot(t, bctx, "fleet")
}

// waitJS polls a JS condition until it holds.
func waitJS(t *testing.T, bctx context.Context, d time.Duration, what, cond string) {
	t.Helper()
	sharedtest.Eventually(t, d, func() error {
		ok, err := eval[bool](bctx, "!!("+cond+")")
		if err != nil {
			return err
		}
		if !ok {
			return errorf("%s: not yet", what)
		}
		return nil
	})
}

// shot writes a PNG of the page to $PROCFLEET_SCREENSHOTS/<name>.png when
// that variable names a directory (the README's screenshots).
func shot(t *testing.T, bctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("PROCFLEET_SCREENSHOTS")
	if dir == "" {
		return
	}
	// A fresh snapshot first, so the picture is current.
	last, err := eval[float64](bctx, `S.lastSnap`)
	if err != nil {
		t.Fatal(err)
	}
	waitJS(t, bctx, 5*time.Second, "a fresh snapshot", "S.lastSnap > "+strconv.FormatFloat(last, 'f', 0, 64))
	ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboard-"+name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDashboardOpen: without any token configured (loopback only) the page
// opens directly and its data calls need no token.
func TestDashboardOpen(t *testing.T) {
	t.Parallel()
	base := startServe(t, fleettest.StartServer(t).Connect(t), dispatcher.ServeConfig{})
	if code, body, _ := get(t, http.MethodGet, base+"/", ""); code != http.StatusOK || !strings.Contains(body, "/ui/app.js") {
		t.Fatalf("GET / with no token configured: %d", code)
	}
	if code, _, _ := get(t, http.MethodGet, base+"/v1/failures", ""); code != http.StatusOK {
		t.Fatalf("GET /v1/failures with no token configured: %d", code)
	}
	if code, _, _ := get(t, http.MethodGet, base+"/ui/nope.js", ""); code != http.StatusNotFound {
		t.Fatalf("GET /ui/nope.js: %d, want 404", code)
	}
}

// TestDashboardSecondTab: a second tab opened on the page (the browser's
// session cookie lets it in, but the token lives in the first tab's
// sessionStorage) asks to sign in for itself, and the first tab stays
// signed in. It used to answer its 401 by signing the whole browser out.
func TestDashboardSecondTab(t *testing.T) {
	bctx := browser(t)
	nc := fleettest.StartServer(t).Connect(t)
	base := startServe(t, nc, dispatcher.ServeConfig{HTTPTokens: testTokens()})
	run(t, bctx, 20*time.Second, "sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), tokAll),
		chromedp.Click(chromedp.CSS("#login-btn")),
		chromedp.WaitVisible(chromedp.CSS("#tabs")),
	)
	second, cancel := chromedp.NewContext(bctx)
	defer cancel()
	run(t, second, 20*time.Second, "the second tab asks to sign in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
	)
	run(t, bctx, 20*time.Second, "the first tab, reloaded, is still signed in",
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("#tabs")),
	)
}
