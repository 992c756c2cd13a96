package dispatcher_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
)

// get sends a GET that lasts as long as ctx (an event stream, a long poll)
// and returns its response.
func get(t *testing.T, ctx context.Context, url string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// flood publishes n progress reports of about size bytes for job id (then
// its result, with result), and waits until the server has them.
func flood(t *testing.T, s served, id string, n, size int, result bool) {
	t.Helper()
	data := []byte(`"` + strings.Repeat("p", size) + `"`)
	for range n {
		if err := s.NC.Publish("fleet.progress."+id, data); err != nil {
			t.Fatal(err)
		}
	}
	if !result {
		return
	}
	if err := s.NC.Publish("fleet.result."+id, []byte(`{"id":"`+id+`","ok":true}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestHTTPEventsKeepTheResult: the dashboard's stream of a job drops
// progress reports a slow client cannot take, never the job's result, on
// which the page ends its live view.
func TestHTTPEventsKeepTheResult(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, dispatcher.ServeConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp := get(t, ctx, s.URL+"/v1/events?job=flooded")
	defer resp.Body.Close()
	// Nothing is read while the reports come: the stream backs up.
	flood(t, s, "flooded", 3000, 2000, true)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if sc.Text() == "event: result" {
			return
		}
	}
	t.Fatalf("the stream ended without the job's result: %v", sc.Err())
}

// TestHTTPStreamDropsAStalledClient: a progress stream whose client reads
// nothing is ended after HTTPWriteTimeout, and with it its subscriptions
// and the reports held for it.
func TestHTTPStreamDropsAStalledClient(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	s := startServe(t, nc, dispatcher.ServeConfig{HTTPWriteTimeout: 300 * time.Millisecond})
	base := s.NC.NumSubscriptions()
	// A small receive buffer, set before the connection opens so that the
	// window stays small: the server's writes block soon.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	conn, err := d.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/jobs/stalled/progress HTTP/1.1\r\nHost: %s\r\n\r\n", strings.TrimPrefix(s.URL, "http://"))
	// Open: subscribed to the job's progress and result (the connection
	// may have made its reply inbox's subscription on the way).
	var open int
	fleettest.Eventually(t, 10*time.Second, func() error {
		if open = s.NC.NumSubscriptions(); open < base+2 {
			return fmt.Errorf("%d subscriptions, the stream's not yet open", open)
		}
		return nil
	})
	flood(t, s, "stalled", 200, 100_000, false) // 20 MB, past any socket buffer
	if err := s.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 20*time.Second, func() error {
		if n := s.NC.NumSubscriptions(); n > open-2 {
			return fmt.Errorf("%d subscriptions: the stream's are held for a client that reads nothing (%d while open)", n, open)
		}
		return nil
	})
}
