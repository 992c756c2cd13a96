package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestClientWaitsForItsOwnJob: a client waiting for a job's result gets the
// result of its own submission (matched by the PubAck's sequence), never
// that of another job under the same id, stored before or after.
func TestClientWaitsForItsOwnJob(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	nc := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatcher.EnsureClient(ctx, nc, queue.Config{Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	topo := c.Topology()
	id, seq, err := c.SubmitSeq(ctx, "", &queue.Job{ID: "mine", Command: "echo"})
	if err != nil {
		t.Fatal(err)
	}
	if id != "mine" || seq == 0 {
		t.Fatalf("SubmitSeq = %q, %d", id, seq)
	}
	// A duplicate submission is the same job: same sequence.
	if _, dupSeq, err := c.SubmitSeq(ctx, "", &queue.Job{ID: "mine", Command: "echo"}); err != nil || dupSeq != seq {
		t.Fatalf("duplicate SubmitSeq = %d, %v; want sequence %d", dupSeq, err, seq)
	}
	store := func(jobSeq uint64, v string) {
		t.Helper()
		if err := topo.StoreResult(ctx, &queue.Result{ID: "mine", JobSeq: jobSeq, OK: true, Result: json.RawMessage(v)}); err != nil {
			t.Fatal(err)
		}
	}
	// Another job that reused the id finished first, and is the latest.
	store(seq+100, `"theirs"`)

	got := make(chan *queue.Result, 1)
	errs := make(chan error, 1)
	go func() {
		r, err := c.ResultFor(ctx, "mine", seq, nil)
		if err != nil {
			errs <- err
			return
		}
		got <- r
	}()
	// A plain Result takes the latest, whoever's it is. Whether or not the
	// waiter has looked yet, it must not take it (checked here, and at the
	// end by what it returns).
	if r, err := c.Result(ctx, "mine", nil); err != nil || string(r.Result) != `"theirs"` {
		t.Fatalf("latest result = %+v, %v", r, err)
	}
	select {
	case r := <-got:
		t.Fatalf("ResultFor returned another job's result: %s (job_seq %d)", r.Result, r.JobSeq)
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	store(seq, `"mine"`)
	select {
	case r := <-got:
		if string(r.Result) != `"mine"` || r.JobSeq != seq {
			t.Fatalf("ResultFor = %s (job_seq %d), want mine (%d)", r.Result, r.JobSeq, seq)
		}
	case err := <-errs:
		t.Fatal(err)
	case <-ctx.Done():
		t.Fatal("ResultFor did not return its own job's result")
	}
}

// TestNewClientAdoptsPartitions: a client opened without a partition count
// (the command line's status and submit) works against a fleet created with
// another count than the default (`serve --partitions 2`): it adopts the
// stream's, and routes a session job to that session's partition.
func TestNewClientAdoptsPartitions(t *testing.T) {
	t.Parallel()
	srv := fleettest.StartServer(t)
	nc := srv.Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := dispatcher.EnsureClient(ctx, nc, queue.Config{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	c, err := dispatcher.NewClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatalf("NewClient on a fleet of 2 partitions: %v", err)
	}
	cfg := c.Topology().Config
	if cfg.Partitions != 2 {
		t.Fatalf("Partitions = %d, want the stream's 2", cfg.Partitions)
	}
	if _, err := c.Submit(ctx, "user-42", &queue.Job{ID: "adopt-1", Command: "echo"}); err != nil {
		t.Fatal(err)
	}
	p := cfg.PartitionOf("user-42")
	cons, err := c.Topology().PartitionConsumer(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	// The consumer counts a stored message a moment after the PubAck.
	fleettest.Eventually(t, 10*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 1 {
			return fmt.Errorf("partition %d holds %d jobs, want the one submitted", p, info.NumPending)
		}
		return nil
	})
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("Status: %v", err)
	}
}

// TestStatusWithForeignEntries: `dispatcher status` works with entries no
// agent wrote (a client of the embedded server, which has no users, can
// write them): a registry entry without a start shows no uptime (not
// 2562047h47m16s), one that is not JSON is listed by its key (the agents
// count it), and a key in the leases bucket that is no lease is left out.
func TestStatusWithForeignEntries(t *testing.T) {
	t.Parallel()
	nc := fleettest.StartServer(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := dispatcher.EnsureClient(ctx, nc, queue.Config{Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	topo := c.Topology()
	if _, err := topo.Agents.Put(ctx, "forged", []byte(`{"name":"forged","host":"elsewhere"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Agents.Put(ctx, "notjson", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Leases.Put(ctx, "junk", []byte("ghost")); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var table strings.Builder
	if err := st.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	var line, notJSON string
	for l := range strings.Lines(table.String()) {
		if strings.HasPrefix(l, "forged ") {
			line = l
		}
		if strings.HasPrefix(l, "notjson ") {
			notJSON = l
		}
	}
	if f := strings.Fields(line); len(f) < 4 || f[3] != "-" {
		t.Fatalf("the forged entry's line %q, want uptime -:\n%s", line, table.String())
	}
	// The agents count an entry that is not JSON as an agent of the
	// default queue (its partitions wait for it until it expires): status
	// shows it, so that a user sees why.
	if !strings.Contains(notJSON, "default") {
		t.Fatalf("no line for the entry that is not JSON:\n%s", table.String())
	}
}
