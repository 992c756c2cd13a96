package queue_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	if err := (queue.Config{}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	d := queue.Config{}.WithDefaults()
	if d.Prefix != "fleet" || d.Partitions != 64 || d.Replicas != 1 || d.Storage != jetstream.FileStorage ||
		d.DedupWindow != 2*time.Minute || d.ResultsMaxAge != 24*time.Hour || d.ResultsDedup != time.Hour ||
		d.AgentTTL != 3*time.Second || d.LeaseTTL != 6*time.Second || d.AckWait != 10*time.Second ||
		d.MaxDeliver != 25 || d.MaxAckPending != 1000 {
		t.Errorf("unexpected defaults: %+v", d)
	}
	if d.MaxDeliver <= queue.MaxAttemptsLimit {
		t.Errorf("default MaxDeliver %d must exceed MaxAttemptsLimit %d", d.MaxDeliver, queue.MaxAttemptsLimit)
	}
	if got := (queue.Config{ResultsMaxAge: time.Minute}).WithDefaults().ResultsDedup; got != time.Minute {
		t.Errorf("ResultsDedup not capped at ResultsMaxAge: %s", got)
	}

	tests := []struct {
		field string
		edit  func(*queue.Config)
	}{
		{"Prefix", func(c *queue.Config) { c.Prefix = "a.b" }},
		{"Partitions", func(c *queue.Config) { c.Partitions = -1 }},
		{"Partitions", func(c *queue.Config) { c.Partitions = queue.MaxPartitions + 1 }},
		{"Replicas", func(c *queue.Config) { c.Replicas = 7 }},
		{"Storage", func(c *queue.Config) { c.Storage = 9 }},
		{"DedupWindow", func(c *queue.Config) { c.DedupWindow = -time.Second }},
		{"ResultsMaxAge", func(c *queue.Config) { c.ResultsMaxAge = -time.Second }},
		{"ResultsDedup", func(c *queue.Config) { c.ResultsDedup = 48 * time.Hour }},
		{"AgentTTL", func(c *queue.Config) { c.AgentTTL = 100 * time.Millisecond }},
		{"LeaseTTL", func(c *queue.Config) { c.LeaseTTL = 100 * time.Millisecond }},
		{"AckWait", func(c *queue.Config) { c.AckWait = -1 }},
		{"MaxDeliver", func(c *queue.Config) { c.MaxDeliver = -2 }},
		{"MaxAckPending", func(c *queue.Config) { c.MaxAckPending = -5 }},
	}
	for _, tt := range tests {
		c := queue.Config{}.WithDefaults()
		tt.edit(&c)
		err := c.Validate()
		if !errors.Is(err, queue.ErrInvalidConfig) {
			t.Errorf("%s: err = %v, want ErrInvalidConfig", tt.field, err)
			continue
		}
		if !containsWord(err.Error(), tt.field) {
			t.Errorf("%s: error %q does not name the field", tt.field, err)
		}
	}
}

func containsWord(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i:i+len(w)] == w {
			return true
		}
	}
	return false
}

func TestEnsureCreatesTopology(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 64})
	ctx := testCtx(t)

	names := map[string]bool{}
	for name := range b.js.StreamNames(ctx).Name() {
		names[name] = true
	}
	for _, s := range []string{"FLEET_JOBS", "FLEET_RESULTS", "FLEET_DLQ", "KV_fleet_agents", "KV_fleet_leases"} {
		if !names[s] {
			t.Errorf("stream %s missing; have %v", s, names)
		}
	}
	info, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.Retention != jetstream.WorkQueuePolicy || info.Config.Storage != jetstream.FileStorage {
		t.Errorf("jobs stream: retention %v storage %v", info.Config.Retention, info.Config.Storage)
	}
	consumers := map[string]jetstream.ConsumerConfig{}
	lister := b.topo.Jobs.ListConsumers(ctx)
	for ci := range lister.Info() {
		consumers[ci.Name] = ci.Config
	}
	if err := lister.Err(); err != nil {
		t.Fatal(err)
	}
	if len(consumers) != 65 {
		t.Fatalf("%d consumers, want 65", len(consumers))
	}
	for p := range 64 {
		c, ok := consumers[queue.PartitionConsumerName(p)]
		if !ok {
			t.Fatalf("consumer p-%d missing", p)
		}
		if c.FilterSubject != b.cfg.PartitionFilter(p) || c.AckPolicy != jetstream.AckExplicitPolicy ||
			c.DeliverPolicy != jetstream.DeliverAllPolicy || c.MaxDeliver != 25 || c.AckWait != 10*time.Second {
			t.Errorf("consumer p-%d: %+v", p, c)
		}
	}
	if c := consumers["any"]; c.FilterSubject != "" || !slices.Equal(c.FilterSubjects, []string{"fleet.job.any", "fleet.job.s.>"}) {
		t.Errorf("consumer any filters %q %q", c.FilterSubject, c.FilterSubjects)
	}
	st, err := b.topo.Leases.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.TTL() != 6*time.Second || st.LimitMarkerTTL() != 6*time.Second {
		t.Errorf("leases bucket TTL %s marker TTL %s", st.TTL(), st.LimitMarkerTTL())
	}

	// Idempotent, and concurrent-safe.
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 64})
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("repeated Ensure: %v", err)
		}
	}
}

func TestEnsureMismatch(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 8})
	ctx := testCtx(t)

	var me *queue.MismatchError
	_, err := queue.Ensure(ctx, b.js, queue.Config{Partitions: 4})
	if !errors.As(err, &me) || me.Field != "Partitions" || me.Want != 4 || me.Have != 8 {
		t.Fatalf("Ensure with other partition count: %v (%#v)", err, me)
	}
	_, err = queue.Open(ctx, b.js, queue.Config{Partitions: 4})
	if !errors.As(err, &me) || me.Field != "Partitions" {
		t.Fatalf("Open with other partition count: %v", err)
	}
	// Open without a partition count adopts the stream's.
	topo, err := queue.Open(ctx, b.js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if topo.Config.Partitions != 8 {
		t.Errorf("Open adopted %d partitions, want 8", topo.Config.Partitions)
	}
	// So does Ensure (an agent that finds part of the topology missing).
	if topo, err = queue.Ensure(ctx, b.js, queue.Config{}); err != nil {
		t.Fatalf("Ensure without a partition count against a stream of 8: %v", err)
	}
	if topo.Config.Partitions != 8 {
		t.Errorf("Ensure adopted %d partitions, want 8", topo.Config.Partitions)
	}
	// A queue Ensure makes without a count gets the fleet's: the default
	// queue's.
	if topo, err = queue.Ensure(ctx, b.js, queue.Config{Queue: "fresh"}); err != nil {
		t.Fatalf("Ensure a new queue without a partition count: %v", err)
	}
	if topo.Config.Partitions != 8 {
		t.Errorf("new queue made with %d partitions, want the default queue's 8", topo.Config.Partitions)
	}
	// The stream was not touched.
	info, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Config.SubjectTransform.Destination != "fleet.job.p.{{partition(8,1)}}.{{wildcard(1)}}" {
		t.Errorf("transform changed: %+v", info.Config.SubjectTransform)
	}
}

func TestEnsureMismatchFields(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	_, js := connect(t, url)
	ctx := testCtx(t)

	// Foreign streams squatting on the names.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "A_JOBS", Subjects: []string{"a.job.s.*", "a.job.any"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "B_RESULTS", Subjects: []string{"b.results.>"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		prefix, resource, field string
	}{
		{"a", "stream A_JOBS", "Retention"},
		{"b", "stream B_RESULTS", "Subjects"},
	}
	for _, tt := range tests {
		_, err := queue.Ensure(ctx, js, queue.Config{Prefix: tt.prefix, Partitions: 2})
		var me *queue.MismatchError
		if !errors.As(err, &me) || me.Resource != tt.resource || me.Field != tt.field {
			t.Errorf("prefix %s: err %v, want mismatch of %s %s", tt.prefix, err, tt.resource, tt.field)
		}
	}

	// A consumer with the right name but another filter.
	topo, err := queue.Ensure(ctx, js, queue.Config{Prefix: "c", Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := topo.Jobs.DeleteConsumer(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Jobs.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: "p-1", FilterSubject: "c.job.p.1.x", AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	_, err = queue.Ensure(ctx, js, queue.Config{Prefix: "c", Partitions: 2})
	var me *queue.MismatchError
	if !errors.As(err, &me) || me.Resource != "consumer C_JOBS/p-1" || me.Field != "FilterSubject" {
		t.Errorf("consumer filter mismatch: %v", err)
	}
}

func TestEnsureUpdatesTunables(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2})
	ctx := testCtx(t)
	topo, err := queue.Ensure(ctx, b.js, queue.Config{
		Partitions: 2, AckWait: 7 * time.Second, MaxDeliver: 9, DedupWindow: time.Minute, LeaseTTL: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := topo.PartitionConsumer(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Config.AckWait != 7*time.Second || ci.Config.MaxDeliver != 9 {
		t.Errorf("consumer not updated: AckWait %s MaxDeliver %d", ci.Config.AckWait, ci.Config.MaxDeliver)
	}
	si, err := topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.Config.Duplicates != time.Minute {
		t.Errorf("jobs Duplicates %s, want 1m", si.Config.Duplicates)
	}
	// Open reads the tunables back.
	opened, err := queue.Open(ctx, b.js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if opened.Config.LeaseTTL != 3*time.Second || opened.Config.DedupWindow != time.Minute {
		t.Errorf("Open config: LeaseTTL %s DedupWindow %s", opened.Config.LeaseTTL, opened.Config.DedupWindow)
	}
}

// TestEnsureKeepsDeclaredLimits: a queue's limits are declared (queue add:
// DeclareLimits); whoever else opens the queue with limits of its own or
// none (an agent, a dispatcher restarting, a submit) leaves them, and a
// queue with limits keeps refusing new jobs when full rather than taking
// schedules, which would drop waiting ones.
func TestEnsureKeepsDeclaredLimits(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2})
	ctx := testCtx(t)
	limits := func() (int64, int64, jetstream.DiscardPolicy, bool) {
		t.Helper()
		si, err := b.topo.Jobs.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return si.Config.MaxMsgs, si.Config.MaxBytes, si.Config.Discard, si.Config.AllowMsgSchedules
	}
	ensure := func(cfg queue.Config) {
		t.Helper()
		cfg.Partitions = 2
		if _, err := queue.Ensure(ctx, b.js, cfg); err != nil {
			t.Fatal(err)
		}
	}
	ensure(queue.Config{Limits: queue.QueueLimits{MaxMsgs: 5, MaxBytes: 1 << 20}, DeclareLimits: true})
	for name, cfg := range map[string]queue.Config{
		"no limits":             {},
		"other limits":          {Limits: queue.QueueLimits{MaxMsgs: 7}},
		"schedules, no limits":  {Schedules: true},
		"memory consumers, too": {MemoryConsumers: true},
	} {
		ensure(cfg)
		if n, by, d, sched := limits(); n != 5 || by != 1<<20 || d != jetstream.DiscardNew || sched {
			t.Fatalf("after an Ensure with %s: MaxMsgs %d, MaxBytes %d, discard %v, schedules %v; want 5, 1 MiB, new, none", name, n, by, d, sched)
		}
	}
	ensure(queue.Config{DeclareLimits: true})
	if n, by, _, _ := limits(); n != -1 || by != -1 {
		t.Fatalf("after declaring no limits: MaxMsgs %d, MaxBytes %d; want unlimited", n, by)
	}
}

func TestOpenNoTopology(t *testing.T) {
	t.Parallel()
	url := startServer(t)
	_, js := connect(t, url)
	_, err := queue.Open(testCtx(t), js, queue.Config{})
	if !errors.Is(err, queue.ErrNoTopology) {
		t.Fatalf("Open on empty server: %v, want ErrNoTopology", err)
	}
	if _, err := queue.Ensure(testCtx(t), js, queue.Config{Prefix: "bad prefix"}); !errors.Is(err, queue.ErrInvalidConfig) {
		t.Errorf("Ensure with bad prefix: %v", err)
	}
}

// TestWorkQueueConsumers: the partition and any consumers have disjoint
// filters, so each job goes to exactly one, and an ack removes it.
func TestWorkQueueConsumers(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 4})
	ctx := testCtx(t)

	want := map[string]string{} // job id -> session
	for i := range 40 {
		session := fmt.Sprintf("s%d", i%10)
		if i%4 == 0 {
			session = ""
		}
		j := &queue.Job{Command: "echo"}
		if _, err := b.topo.Submit(ctx, session, j); err != nil {
			t.Fatal(err)
		}
		want[j.ID] = session
	}

	drain := func(c jetstream.Consumer, check func(*queue.Job)) int {
		n := 0
		for {
			batch, err := c.FetchNoWait(100)
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for m := range batch.Messages() {
				got++
				md, err := m.Metadata()
				if err != nil {
					t.Fatal(err)
				}
				j, err := queue.ParseJob(m.Subject(), m.Headers(), m.Data(), md.Sequence.Stream, b.cfg)
				if err != nil {
					t.Fatal(err)
				}
				check(j)
				if err := m.DoubleAck(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if err := batch.Error(); err != nil {
				t.Fatal(err)
			}
			n += got
			if got == 0 {
				return n
			}
		}
	}
	total := 0
	for p := range 4 {
		c, err := b.topo.PartitionConsumer(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		total += drain(c, func(j *queue.Job) {
			if want[j.ID] != j.Session || j.Session == "" || b.topo.PartitionOf(j.Session) != p {
				t.Errorf("partition %d delivered job %s of session %q", p, j.ID, j.Session)
			}
		})
	}
	anyC, err := b.topo.AnyConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total += drain(anyC, func(j *queue.Job) {
		if want[j.ID] != "" || j.Session != "" {
			t.Errorf("any consumer delivered job %s of session %q", j.ID, j.Session)
		}
	})
	if total != 40 {
		t.Errorf("consumed %d jobs, want 40", total)
	}
	info, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("%d jobs left after acking all", info.State.Msgs)
	}
	if _, err := b.topo.PartitionConsumer(ctx, 4); err == nil {
		t.Error("PartitionConsumer(4) of 4 partitions succeeded")
	}
}

// TestSubmitToAFullQueue: a queue at its limits refuses a new job with
// ErrQueueFull, naming the queue, its limit and how to raise it; the jobs
// it holds stay.
func TestSubmitToAFullQueue(t *testing.T) {
	t.Parallel()
	b := setup(t, queue.Config{Partitions: 2, Queue: "small", Limits: queue.QueueLimits{MaxMsgs: 2}})
	ctx := testCtx(t)
	for i := range 2 {
		if _, err := b.topo.Submit(ctx, "s", &queue.Job{Command: "echo", Payload: json.RawMessage(strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := b.topo.Submit(ctx, "s", &queue.Job{Command: "echo"})
	if !errors.Is(err, queue.ErrQueueFull) || !strings.Contains(err.Error(), "queue small holds at most 2 jobs") || !strings.Contains(err.Error(), "queue add small") {
		t.Fatalf("a third job: %v, want ErrQueueFull naming the queue and its limit", err)
	}
	si, err := b.topo.Jobs.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.State.Msgs != 2 {
		t.Fatalf("the full queue holds %d jobs, want its 2", si.State.Msgs)
	}
}
