package queue_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// TestEnsureUpgradesJobsStreamForSchedules: a jobs stream made before
// schedules still opens (agents keep working), refuses delayed jobs with a
// clear error, and Ensure upgrades it in place without losing a job.
func TestEnsureUpgradesJobsStreamForSchedules(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	_, js := connect(t, url)
	ctx := testCtx(t)
	cfg := queue.Config{Partitions: 8, Schedules: true}
	// The topology as Ensure makes it, then FLEET_JOBS as the versions
	// before schedules created it.
	if _, err := queue.Ensure(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, "FLEET_JOBS"); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "FLEET_JOBS", Subjects: []string{"fleet.job.s.*", "fleet.job.any"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Duplicates: 2 * time.Minute,
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: "fleet.job.s.*", Destination: "fleet.job.p.{{partition(8,1)}}.{{wildcard(1)}}"},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "fleet.job.s.old", []byte(`{"id":"old","command":"echo"}`)); err != nil {
		t.Fatal(err)
	}
	old, err := queue.Open(ctx, js, cfg)
	if err != nil {
		t.Fatalf("Open on a stream from before schedules: %v", err)
	}
	if old.SchedulesAllowed() {
		t.Fatal("SchedulesAllowed on an old stream")
	}
	_, err = old.SubmitAt(ctx, "s", &queue.Job{Command: "echo"}, time.Now().Add(time.Minute))
	if !errors.Is(err, queue.ErrSchedulesUnsupported) {
		t.Fatalf("SubmitAt on an old stream: %v, want ErrSchedulesUnsupported", err)
	}

	topo, err := queue.Ensure(ctx, js, cfg)
	if err != nil {
		t.Fatalf("Ensure on a stream from before schedules: %v", err)
	}
	if !topo.SchedulesAllowed() {
		t.Fatal("Ensure did not upgrade the jobs stream")
	}
	info, err := js.Stream(ctx, "FLEET_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	sc := info.CachedInfo().Config
	if !sc.AllowMsgSchedules || !slices.Contains(sc.Subjects, "fleet.schedule.*") || !slices.Contains(sc.Subjects, "fleet.delay.*") {
		t.Fatalf("upgraded stream config: schedules %v, subjects %v", sc.AllowMsgSchedules, sc.Subjects)
	}
	if n := info.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("%d jobs after the upgrade, want the 1 from before", n)
	}
	if _, err := topo.SubmitAt(ctx, "s", &queue.Job{Command: "echo"}, time.Now().Add(time.Minute)); err != nil {
		t.Fatalf("SubmitAt after the upgrade: %v", err)
	}
	// Idempotent: a second Ensure changes nothing.
	if _, err := queue.Ensure(ctx, js, cfg); err != nil {
		t.Fatal(err)
	}
	// The server cannot turn schedules off, and refuses them beside
	// discard-new: a client that does not ask for schedules (a dispatcher
	// without --schedules) still opens the stream, which keeps them.
	plain := cfg
	plain.Schedules = false
	if _, err := queue.Ensure(ctx, js, plain); err != nil {
		t.Fatalf("Ensure without schedules on a stream that has them: %v", err)
	}
	if info, err = js.Stream(ctx, "FLEET_JOBS"); err != nil {
		t.Fatal(err)
	}
	if sc := info.CachedInfo().Config; !sc.AllowMsgSchedules || sc.Discard != jetstream.DiscardOld {
		t.Fatalf("after an Ensure without schedules: schedules %v, discard %v", sc.AllowMsgSchedules, sc.Discard)
	}
	// Nor can a declaration give it limits: they would drop waiting jobs.
	limited := plain
	limited.Limits, limited.DeclareLimits = queue.QueueLimits{MaxMsgs: 5}, true
	if _, err := queue.Ensure(ctx, js, limited); !errors.Is(err, queue.ErrBadRequest) || !strings.Contains(err.Error(), "message schedules") {
		t.Fatalf("declaring limits on a stream with schedules: %v, want a bad request saying why", err)
	}
}

// TestSubmitAtInput: bad delays are refused before anything is published;
// a resubmitted delayed job is a duplicate.
func TestSubmitAtInput(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Schedules: true})
	ctx := testCtx(t)
	_, err := b.topo.SubmitAt(ctx, "s", &queue.Job{Command: "echo"}, time.Now().Add(-time.Hour))
	if !errors.Is(err, queue.ErrBadRequest) || !strings.Contains(err.Error(), "in the past") {
		t.Fatalf("past: %v", err)
	}
	if _, err = b.topo.SubmitAt(ctx, "s", &queue.Job{Command: "echo"}, time.Time{}); !errors.Is(err, queue.ErrBadRequest) {
		t.Fatalf("zero time: %v", err)
	}
	if _, err = b.topo.SubmitAt(ctx, "bad session", &queue.Job{Command: "echo"}, time.Now().Add(time.Hour)); !errors.Is(err, queue.ErrBadRequest) {
		t.Fatalf("bad session: %v", err)
	}
	if _, n, err := b.topo.Delayed(ctx, 0); err != nil || n != 0 {
		t.Fatalf("after refusals: %d delayed, %v", n, err)
	}
	at := time.Now().Add(time.Hour)
	for i, wantDup := range []bool{false, true} {
		ack, err := b.topo.SubmitAt(ctx, "s", &queue.Job{ID: "d1", Command: "echo"}, at)
		if err != nil || ack.Duplicate != wantDup {
			t.Fatalf("submit %d: %+v, %v", i, ack, err)
		}
	}
	list, n, err := b.topo.Delayed(ctx, 0)
	if err != nil || n != 1 || list[0].Kind != "at" || list[0].Name != "d1" || list[0].Session != "s" ||
		list[0].Command != "echo" || !list[0].Next.Equal(at.Truncate(time.Nanosecond).UTC()) {
		t.Fatalf("Delayed = %+v, %d, %v (due %v)", list, n, err, at)
	}
	if err := b.topo.RemoveDelayed(ctx, "d1"); err != nil {
		t.Fatal(err)
	}
	if err := b.topo.RemoveDelayed(ctx, "d1"); !errors.Is(err, queue.ErrScheduleNotFound) {
		t.Fatalf("second remove: %v", err)
	}
}

// TestAddScheduleInput: each bad schedule is a bad request that names the
// problem, and nothing is stored; a cron schedule the server accepts shows
// its next firing in its zone.
func TestAddScheduleInput(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Schedules: true})
	ctx := testCtx(t)
	job := func() *queue.Job { return &queue.Job{Command: "echo"} }
	for _, tc := range []struct {
		name string
		s    queue.Schedule
		want string
	}{
		{"bad name", queue.Schedule{Name: "a.b", Every: "1h", Job: job()}, "schedule name"},
		{"long name", queue.Schedule{Name: strings.Repeat("n", 101), Every: "1h", Job: job()}, "longer than 100"},
		{"neither", queue.Schedule{Name: "n", Job: job()}, "set every or cron"},
		{"both", queue.Schedule{Name: "n", Every: "1h", Cron: "0 2 * * *", Job: job()}, "not both"},
		{"not a duration", queue.Schedule{Name: "n", Every: "hourly", Job: job()}, "not a duration"},
		{"too often", queue.Schedule{Name: "n", Every: "500ms", Job: job()}, "below the minimum"},
		{"zone with every", queue.Schedule{Name: "n", Every: "1h", TimeZone: "UTC", Job: job()}, "cron only"},
		{"four fields", queue.Schedule{Name: "n", Cron: "0 2 * *", Job: job()}, "4 fields"},
		{"minute 60", queue.Schedule{Name: "n", Cron: "60 2 * * *", Job: job()}, "outside 0-59"},
		{"bad shorthand", queue.Schedule{Name: "n", Cron: "@often", Job: job()}, "shorthand"},
		{"bad zone", queue.Schedule{Name: "n", Cron: "0 2 * * *", TimeZone: "Mars/Base", Job: job()}, "time_zone"},
		{"no job", queue.Schedule{Name: "n", Every: "1h"}, "no job"},
		{"job with id", queue.Schedule{Name: "n", Every: "1h", Job: &queue.Job{ID: "x", Command: "echo"}}, "no id"},
		{"job without command", queue.Schedule{Name: "n", Every: "1h", Job: &queue.Job{}}, "command"},
		{"bad session", queue.Schedule{Name: "n", Every: "1h", Session: "a b", Job: job()}, "session"},
	} {
		_, err := b.topo.AddSchedule(ctx, &tc.s, false)
		if !errors.Is(err, queue.ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a bad request about %q", tc.name, err, tc.want)
		}
	}
	if list, err := b.topo.Schedules(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after refusals: %+v, %v", list, err)
	}

	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Skip("no time zone data:", err)
	}
	if _, err := b.topo.AddSchedule(ctx, &queue.Schedule{Name: "nightly", Session: "s1", Cron: "0 2 * * *", TimeZone: "Europe/Berlin", Job: job()}, false); err != nil {
		t.Fatal(err)
	}
	list, err := b.topo.Schedules(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("Schedules = %+v, %v", list, err)
	}
	got := list[0]
	next := got.Next.In(berlin)
	if got.Kind != "cron" || got.Pattern != "0 0 2 * * *" || got.Session != "s1" || next.Hour() != 2 || next.Minute() != 0 ||
		!got.Next.After(time.Now()) || got.Next.After(time.Now().Add(25*time.Hour)) {
		t.Fatalf("nightly = %+v (next %v)", got, next)
	}
	// Replace keeps one schedule under the name.
	if _, err := b.topo.AddSchedule(ctx, &queue.Schedule{Name: "nightly", Every: "1h", Job: job()}, true); err != nil {
		t.Fatal(err)
	}
	if list, err := b.topo.Schedules(ctx); err != nil || len(list) != 1 || list[0].Pattern != "@every 1h0m0s" {
		t.Fatalf("after replace: %+v, %v", list, err)
	}
}

// TestJobDeadlineFields: expires_at and ttl_ms are checked like every other
// envelope field, and Deadline/Expired read them.
func TestJobDeadlineFields(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body, want string
	}{
		{`{"command":"c","ttl_ms":-1}`, `"ttl_ms" must be between 0 and`},
		{fmt.Sprintf(`{"command":"c","ttl_ms":%d}`, queue.MaxTTLMS+1), `"ttl_ms" must be between 0 and`},
		{`{"command":"c","expires_at":"tomorrow"}`, `"expires_at" must be an RFC 3339 time`},
		{`{"command":"c","expires_at":"2030-01-01T00:00:00Z","ttl_ms":5}`, "not both"},
		{`{"command":"c","ttl_ms":"5"}`, `"ttl_ms" has the wrong type`},
	} {
		_, err := queue.ParseJob("fleet.job.any", nil, []byte(tc.body), 1, queue.Config{})
		if !errors.Is(err, queue.ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.body, err, tc.want)
		}
	}
	enq := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	j, err := queue.ParseJob("fleet.job.any", nil, []byte(`{"command":"c","ttl_ms":1500}`), 1, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := j.Deadline(enq); !ok || !d.Equal(enq.Add(1500*time.Millisecond)) {
		t.Fatalf("ttl deadline %v %v", d, ok)
	}
	if _, expired := j.Expired(enq, enq.Add(1499*time.Millisecond)); expired {
		t.Fatal("expired before its deadline")
	}
	if msg, expired := j.Expired(enq, enq.Add(1500*time.Millisecond)); !expired || !strings.Contains(msg, "never ran") {
		t.Fatalf("not expired at its deadline: %q", msg)
	}
	j, err = queue.ParseJob("fleet.job.any", nil, []byte(`{"command":"c","expires_at":"2026-01-02T03:04:06.5+01:00"}`), 1, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := j.Deadline(enq); !ok || !d.Equal(time.Date(2026, 1, 2, 2, 4, 6, 5e8, time.UTC)) {
		t.Fatalf("expires_at deadline %v %v", d, ok)
	}
	if _, ok := (&queue.Job{Command: "c"}).Deadline(enq); ok {
		t.Fatal("a job without deadline has one")
	}
}

// TestSchedulesSurviveServerRestart: the server keeps schedules durably. A
// delayed job that fell due while the server was down fires when it is back
// (once), and a periodic schedule is still there.
func TestSchedulesSurviveServerRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	start := func() (*server.Server, jetstream.JetStream) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, url, err := embedded.Start(ctx, embedded.Config{StoreDir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel))})
		if err != nil {
			t.Fatal(err)
		}
		_, js := connect(t, url)
		return s, js
	}
	ctx := testCtx(t)
	cfg := queue.Config{Partitions: 8, Schedules: true}
	s1, js := start()
	topo, err := queue.Ensure(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	due := time.Now().Add(time.Second)
	if _, err := topo.SubmitAt(ctx, "s1", &queue.Job{ID: "while-down", Command: "echo"}, due); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.AddSchedule(ctx, &queue.Schedule{Name: "daily", Cron: "@daily", Job: &queue.Job{Command: "echo"}}, false); err != nil {
		t.Fatal(err)
	}
	s1.Shutdown()
	s1.WaitForShutdown()
	// Down over the due time.
	<-time.After(time.Until(due) + 200*time.Millisecond)

	s2, js := start()
	t.Cleanup(func() {
		s2.Shutdown()
		s2.WaitForShutdown()
	})
	topo, err = queue.Open(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := topo.PartitionConsumer(ctx, topo.PartitionOf("s1"))
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 1 {
			return fmt.Errorf("%d jobs pending in the partition of s1, want the delayed one", info.NumPending)
		}
		return nil
	})
	if _, n, err := topo.Delayed(ctx, 0); err != nil || n != 0 {
		t.Fatalf("after firing: %d delayed, %v", n, err)
	}
	list, err := topo.Schedules(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "daily" {
		t.Fatalf("Schedules after restart = %+v, %v", list, err)
	}
}

// TestDelayedJobReplacedAfterDedupWindow: past the job dedup window, a
// delayed job submitted again under the same id replaces the one waiting.
func TestDelayedJobReplacedAfterDedupWindow(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{DedupWindow: time.Second, Schedules: true})
	ctx := testCtx(t)
	first := time.Now().Add(time.Hour)
	if _, err := b.topo.SubmitAt(ctx, "s", &queue.Job{ID: "d1", Command: "echo"}, first); err != nil {
		t.Fatal(err)
	}
	second := first.Add(time.Hour)
	eventually(t, 10*time.Second, func() error {
		ack, err := b.topo.SubmitAt(ctx, "s", &queue.Job{ID: "d1", Command: "echo"}, second)
		if err != nil {
			return err
		}
		if ack.Duplicate {
			return errors.New("still inside the dedup window")
		}
		return nil
	})
	list, n, err := b.topo.Delayed(ctx, 0)
	if err != nil || n != 1 || !list[0].Next.Equal(second.UTC()) {
		t.Fatalf("Delayed = %+v, %d, %v; want d1 due %v only", list, n, err, second)
	}
}

// TestWatchDelaysDropsRepeatingSchedules: a client may publish a delayed
// job on a delay subject, and nothing else: a repeating schedule put there
// (subject permissions cannot see the header) is deleted as soon as the
// stream holds it, before it fires; one-shot delayed jobs stay.
func TestWatchDelaysDropsRepeatingSchedules(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, Schedules: true})
	ctx := testCtx(t)
	if err := b.topo.WatchDelays(ctx, b.nc, zaptest.NewLogger(t)); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if _, err := b.topo.SubmitAt(ctx, "", &queue.Job{ID: "once", Command: "echo"}, later); err != nil {
		t.Fatal(err)
	}
	// The same in a named queue, whose stream has schedules too.
	gpu, err := queue.EnsureQueue(ctx, b.js, b.cfg.ForQueue("gpu"))
	if err != nil {
		t.Fatal(err)
	}
	for _, topo := range []*queue.Topology{b.topo, gpu} {
		msg := nats.NewMsg(topo.Config.DelaySubject("evil"))
		msg.Data = []byte(`{"command":"echo"}`)
		msg.Header.Set(queue.ScheduleHeader, "@every 2s")
		msg.Header.Set(queue.ScheduleTargetHeader, topo.Config.AnySubject())
		if _, err := b.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, func() error {
		for _, topo := range []*queue.Topology{b.topo, gpu} {
			if m, err := topo.Jobs.GetLastMsgForSubject(ctx, topo.Config.DelaySubject("evil")); err == nil {
				return fmt.Errorf("the repeating schedule on %s is still stored (seq %d)", m.Subject, m.Sequence)
			}
		}
		return nil
	})
	if _, err := b.topo.Jobs.GetLastMsgForSubject(ctx, b.cfg.DelaySubject("once")); err != nil {
		t.Fatalf("the delayed job's schedule: %v", err)
	}
	info, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("jobs stream holds %d messages, want the delayed job's schedule only", info.State.Msgs)
	}
}
