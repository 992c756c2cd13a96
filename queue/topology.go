package queue

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Topology is the set of NATS resources of one fleet, with handles cached so
// that hot-path calls (Submit, StoreResult, GetResult) never look anything
// up.
type Topology struct {
	// Config is the effective configuration: after Open, tunables and
	// (unless set) Partitions reflect what the server has.
	Config Config
	JS     jetstream.JetStream

	Jobs, Results, DLQ jetstream.Stream
	Agents, Leases     jetstream.KeyValue

	mu        sync.Mutex
	consumers map[string]jetstream.Consumer
}

// Ensure creates or verifies, idempotently, the jobs, results, dead-letter
// and cancels streams, the KV buckets (agents, leases, poison) and the durable job consumers ("p-0".."p-<P-1>"
// and "any"). Concurrent Ensure calls with the same configuration are safe.
//
// An existing resource that differs in a contract field (partition count,
// retention, subjects, storage, a consumer's filter or ack policy) is a
// *MismatchError, never changed. Tunables (dedup windows, max age, TTLs,
// replicas, AckWait, MaxDeliver, MaxAckPending) are updated to cfg. With
// cfg.Partitions 0 an existing jobs stream's partition count is adopted,
// as by Open; a stream made here gets the default queue's count if that
// queue exists (the fleet's), else DefaultPartitions.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg Config) (*Topology, error) {
	adoptPartitions := cfg.Partitions == 0
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if adoptPartitions {
		n, err := streamPartitions(ctx, js, cfg.JobsStream())
		if err == nil && n == 0 && !cfg.IsDefaultQueue() {
			// A queue made here gets the fleet's count, the default
			// queue's, as the dispatcher gives it.
			def := cfg
			def.Queue = ""
			n, err = streamPartitions(ctx, js, def.JobsStream())
		}
		if err != nil {
			return nil, err
		}
		if n > 0 {
			cfg.Partitions = n
		}
	}
	t := &Topology{Config: cfg, JS: js, consumers: make(map[string]jetstream.Consumer)}
	var err error
	if t.Jobs, err = ensureStream(ctx, js, cfg.jobsStreamConfig(), cfg.settleLimits); err != nil {
		return nil, err
	}
	// The jobs stream records at its creation how its consumers keep their
	// state, so that whoever recreates a lost consumer (an agent's Ensure
	// after a server restart, say) makes it the same way; an existing
	// stream's choice wins over cfg's.
	if streamMem := memoryConsumers(t.Jobs.CachedInfo().Config); streamMem != cfg.MemoryConsumers {
		cfg.MemoryConsumers = streamMem
		t.Config = cfg
	}
	if t.Results, err = ensureStream(ctx, js, cfg.resultsStreamConfig(), nil); err != nil {
		return nil, err
	}
	if t.DLQ, err = ensureStream(ctx, js, cfg.dlqStreamConfig(), nil); err != nil {
		return nil, err
	}
	if t.Agents, err = ensureBucket(ctx, js, cfg.agentsBucketConfig()); err != nil {
		return nil, err
	}
	if t.Leases, err = ensureBucket(ctx, js, cfg.leasesBucketConfig()); err != nil {
		return nil, err
	}
	if _, err = ensureBucket(ctx, js, cfg.poisonBucketConfig()); err != nil {
		return nil, err
	}
	if _, err = ensureStream(ctx, js, cfg.cancelsStreamConfig(), nil); err != nil {
		return nil, err
	}
	if err := t.ensureConsumers(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// Open binds to an existing topology without creating anything; it returns
// ErrNoTopology if a stream or bucket is missing. With cfg.Partitions 0 the
// stream's partition count is adopted, otherwise it must match. Tunables are
// read from the server into Topology.Config, so that agents renew leases
// against the real TTL. Consumers are looked up lazily by PartitionConsumer
// and AnyConsumer.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Topology, error) {
	adoptPartitions := cfg.Partitions == 0
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Topology{JS: js, consumers: make(map[string]jetstream.Consumer)}
	var err error
	if t.Jobs, err = openStream(ctx, js, cfg.JobsStream()); err != nil {
		return nil, err
	}
	have := t.Jobs.CachedInfo().Config
	if adoptPartitions {
		if n, ok := parsePartitions(have.SubjectTransform); ok {
			cfg.Partitions = n
		}
	}
	want := cfg.jobsStreamConfig()
	want.Storage = have.Storage // not part of what a reader must agree on
	if err := streamContract(want, have); err != nil {
		return nil, err
	}
	cfg.Storage, cfg.Replicas, cfg.DedupWindow = have.Storage, have.Replicas, have.Duplicates
	cfg.MemoryConsumers = memoryConsumers(have)

	if t.Results, err = openStream(ctx, js, cfg.ResultsStream()); err != nil {
		return nil, err
	}
	have = t.Results.CachedInfo().Config
	want = cfg.resultsStreamConfig()
	want.Storage = have.Storage
	if err := streamContract(want, have); err != nil {
		return nil, err
	}
	cfg.ResultsMaxAge, cfg.ResultsDedup = have.MaxAge, have.Duplicates
	if have.Storage != cfg.Storage {
		cfg.ResultsStorage = map[jetstream.StorageType]string{jetstream.FileStorage: "file", jetstream.MemoryStorage: "memory"}[have.Storage]
	}

	if t.DLQ, err = openStream(ctx, js, cfg.DLQStream()); err != nil {
		return nil, err
	}
	have = t.DLQ.CachedInfo().Config
	want = cfg.dlqStreamConfig()
	want.Storage = have.Storage
	if err := streamContract(want, have); err != nil {
		return nil, err
	}

	var ttl time.Duration
	if t.Agents, ttl, err = openBucket(ctx, js, cfg.AgentsBucket()); err != nil {
		return nil, err
	}
	if ttl > 0 {
		cfg.AgentTTL = ttl
	}
	if t.Leases, ttl, err = openBucket(ctx, js, cfg.LeasesBucket()); err != nil {
		return nil, err
	}
	if ttl > 0 {
		cfg.LeaseTTL = ttl
	}
	// The consumers' AckWait is what an agent's InProgress interval must
	// beat: an agent that opened a topology made with a shorter AckWait than
	// its own default would otherwise let held jobs be redelivered (and run
	// twice) while it still works on them. Every job consumer is created
	// with the same tunables, so the shared one speaks for all.
	if c, err := t.Jobs.Consumer(ctx, AnyConsumerName); err == nil {
		have := c.CachedInfo().Config
		cfg.AckWait, cfg.MaxDeliver, cfg.MaxAckPending = have.AckWait, have.MaxDeliver, have.MaxAckPending
		t.cacheConsumer(AnyConsumerName, c)
		if slices.Equal(consumerFilters(have), cfg.legacyAnyFilters()) {
			// A topology from before the untransformed session subjects
			// were filtered: upgrade it if this user may (an agent with
			// least privilege may not; then the dispatcher's Ensure does).
			// Best effort and bounded: a denied request only times out.
			t.Config = cfg
			uctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, _ = t.upgradeAnyConsumer(uctx, have)
			cancel()
		}
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("queue: consumer %s/%s: %w", cfg.JobsStream(), AnyConsumerName, err)
	}
	t.Config = cfg
	return t, nil
}

// PartitionConsumer returns the durable pull consumer of partition p. Handles
// are cached: only the first call per consumer asks the server.
func (t *Topology) PartitionConsumer(ctx context.Context, p int) (jetstream.Consumer, error) {
	if p < 0 || p >= t.Config.Partitions {
		return nil, fmt.Errorf("queue: partition %d out of range [0,%d)", p, t.Config.Partitions)
	}
	return t.consumer(ctx, PartitionConsumerName(p))
}

// AnyConsumer returns the durable pull consumer of jobs without a session,
// which every agent shares.
func (t *Topology) AnyConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return t.consumer(ctx, AnyConsumerName)
}

// ConsumerOf returns the consumer that delivers the job stored under
// subject: its partition's, or the shared one.
func (t *Topology) ConsumerOf(ctx context.Context, subject string) (jetstream.Consumer, error) {
	if p, ok := t.Config.PartitionOfSubject(subject); ok {
		return t.PartitionConsumer(ctx, p)
	}
	return t.AnyConsumer(ctx)
}

// PartitionOf returns the partition the jobs stream files session under.
func (t *Topology) PartitionOf(session string) int { return t.Config.PartitionOf(session) }

func (t *Topology) consumer(ctx context.Context, name string) (jetstream.Consumer, error) {
	t.mu.Lock()
	c, ok := t.consumers[name]
	t.mu.Unlock()
	if ok {
		return c, nil
	}
	c, err := t.Jobs.Consumer(ctx, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("%w: consumer %s/%s missing", ErrNoTopology, t.Config.JobsStream(), name)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: consumer %s/%s: %w", t.Config.JobsStream(), name, err)
	}
	t.cacheConsumer(name, c)
	return c, nil
}

func (t *Topology) cacheConsumer(name string, c jetstream.Consumer) {
	t.mu.Lock()
	t.consumers[name] = c
	t.mu.Unlock()
}

// Streams.

// ensureStream creates the stream want describes, or checks an existing one
// against it and updates its tunables. settle, when not nil, first adjusts
// want to the existing stream (have), from the same look.
func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig,
	settle func(want *jetstream.StreamConfig, have jetstream.StreamConfig) error) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		s, err = js.CreateStream(ctx, want)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Lost a creation race against a different configuration:
			// verify what won.
			s, err = js.Stream(ctx, want.Name)
		} else if err == nil {
			return s, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", want.Name, err)
	}
	have := s.CachedInfo().Config
	if settle != nil {
		if err := settle(&want, have); err != nil {
			return nil, err
		}
	}
	if err := streamContract(want, have); err != nil {
		return nil, err
	}
	if tuned, upgraded := tuneStream(want, &have), upgradeSchedules(want, &have); !tuned && !upgraded {
		return s, nil
	}
	s, err = js.UpdateStream(ctx, have)
	if err != nil {
		return nil, fmt.Errorf("queue: update stream %s: %w", want.Name, err)
	}
	return s, nil
}

func openStream(ctx context.Context, js jetstream.JetStream, name string) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("%w: stream %s missing", ErrNoTopology, name)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", name, err)
	}
	return s, nil
}

var partitionsRE = regexp.MustCompile(`\{\{\s*[pP]artition\s*\(\s*(\d+)\s*,`)

// streamPartitions returns the partition count of the jobs stream name, 0
// if there is no such stream (or its transform names no count).
func streamPartitions(ctx context.Context, js jetstream.JetStream, name string) (int, error) {
	st, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("queue: stream %s: %w", name, err)
	}
	n, _ := parsePartitions(st.CachedInfo().Config.SubjectTransform)
	return n, nil
}

func parsePartitions(tr *jetstream.SubjectTransformConfig) (int, bool) {
	if tr == nil {
		return 0, false
	}
	m := partitionsRE.FindStringSubmatch(tr.Destination)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// streamContract compares the fields that decide where messages go and how
// long they live.
func streamContract(want, have jetstream.StreamConfig) error {
	mismatch := func(field string, w, h any) error {
		return &MismatchError{Resource: "stream " + want.Name, Field: field, Want: w, Have: h}
	}
	if want.Retention != have.Retention {
		return mismatch("Retention", want.Retention, have.Retention)
	}
	if want.Storage != have.Storage {
		return mismatch("Storage", want.Storage, have.Storage)
	}
	if !sameSet(withoutScheduleSubjects(want.Subjects), withoutScheduleSubjects(have.Subjects)) {
		return mismatch("Subjects", want.Subjects, have.Subjects)
	}
	wt, ht := want.SubjectTransform, have.SubjectTransform
	if (wt == nil) != (ht == nil) || (wt != nil && *wt != *ht) {
		wn, wok := parsePartitions(wt)
		hn, hok := parsePartitions(ht)
		if wok && hok && wn != hn {
			return mismatch("Partitions", wn, hn)
		}
		return mismatch("SubjectTransform", wt, ht)
	}
	return nil
}

// settleLimits settles the limits of an existing jobs stream (have): a
// declaration (DeclareLimits) sets c's, refused on a stream with message
// schedules, which the server cannot turn off and which need discard-old
// (limits would then drop waiting jobs); anyone else keeps the stream's.
func (c Config) settleLimits(want *jetstream.StreamConfig, have jetstream.StreamConfig) error {
	if c.DeclareLimits {
		if have.AllowMsgSchedules && (c.Limits.MaxMsgs > 0 || c.Limits.MaxBytes > 0) {
			return &BadRequestError{Reason: fmt.Sprintf("queue %s has message schedules, which its stream keeps for good and which need discard-old: "+
				"a limit would drop waiting jobs once full, so it takes none (declare limits on a queue without schedules)", c.QueueName())}
		}
		return nil
	}
	want.MaxMsgs, want.MaxBytes = have.MaxMsgs, have.MaxBytes
	if want.AllowMsgSchedules && !have.AllowMsgSchedules && have.Discard == jetstream.DiscardNew && (have.MaxMsgs > 0 || have.MaxBytes > 0) {
		// Schedules need discard-old, which would drop waiting jobs of a
		// full queue: a queue with limits keeps them, without schedules
		// (as withSchedules makes it).
		want.AllowMsgSchedules, want.AllowRollup = false, have.AllowRollup
		want.Subjects = withoutScheduleSubjects(want.Subjects)
	}
	if !want.AllowMsgSchedules {
		want.Discard = have.Discard
	}
	return nil
}

// tuneStream copies want's tunables into have and reports whether any
// changed.
func tuneStream(want jetstream.StreamConfig, have *jetstream.StreamConfig) bool {
	changed := have.Replicas != want.Replicas || have.Duplicates != want.Duplicates ||
		have.MaxAge != want.MaxAge || have.AllowDirect != want.AllowDirect
	have.Replicas, have.Duplicates, have.MaxAge, have.AllowDirect = want.Replicas, want.Duplicates, want.MaxAge, want.AllowDirect
	if want.Retention == jetstream.WorkQueuePolicy && (want.AllowMsgSchedules || !have.AllowMsgSchedules) {
		// A jobs stream: its queue's limits are tunables too. Not on a
		// stream with message schedules for a client that wants none:
		// the server cannot turn them off and refuses them beside
		// DiscardNew, and limits with DiscardOld would drop waiting jobs.
		changed = changed || have.MaxMsgs != want.MaxMsgs || have.MaxBytes != want.MaxBytes || have.Discard != want.Discard
		have.MaxMsgs, have.MaxBytes, have.Discard = want.MaxMsgs, want.MaxBytes, want.Discard
	}
	return changed
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// Buckets.

func ensureBucket(ctx context.Context, js jetstream.JetStream, want jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, want.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, want)
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, want.Bucket)
		} else if err == nil {
			return kv, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("queue: bucket %s: %w", want.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: bucket %s: %w", want.Bucket, err)
	}
	if st.TTL() == want.TTL && st.History() == int64(want.History) && st.LimitMarkerTTL() == want.LimitMarkerTTL {
		return kv, nil
	}
	kv, err = js.UpdateKeyValue(ctx, want)
	if err != nil {
		return nil, fmt.Errorf("queue: update bucket %s: %w", want.Bucket, err)
	}
	return kv, nil
}

// openBucket also returns the bucket's TTL.
func openBucket(ctx context.Context, js jetstream.JetStream, bucket string) (jetstream.KeyValue, time.Duration, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, 0, fmt.Errorf("%w: bucket %s missing", ErrNoTopology, bucket)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("queue: bucket %s: %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("queue: bucket %s: %w", bucket, err)
	}
	return kv, st.TTL(), nil
}

// Consumers.

func (t *Topology) ensureConsumers(ctx context.Context) error {
	infos, err := t.Consumers(ctx)
	if err != nil {
		return err
	}
	existing := make(map[string]jetstream.ConsumerConfig, len(infos))
	for _, info := range infos {
		existing[info.Name] = info.Config
	}
	wants := make([]jetstream.ConsumerConfig, 0, t.Config.Partitions+1)
	for p := range t.Config.Partitions {
		wants = append(wants, t.Config.consumerConfig(PartitionConsumerName(p), t.Config.PartitionFilter(p)))
	}
	wants = append(wants, t.Config.consumerConfig(AnyConsumerName, t.Config.anyConsumerFilters()...))

	for _, want := range wants {
		have, ok := existing[want.Durable]
		if !ok {
			c, err := t.Jobs.CreateConsumer(ctx, want)
			if err == nil {
				t.cacheConsumer(want.Durable, c)
				continue
			}
			if !errors.Is(err, jetstream.ErrConsumerExists) {
				return fmt.Errorf("queue: create consumer %s/%s: %w", t.Config.JobsStream(), want.Durable, err)
			}
			// Created concurrently with another configuration: verify it.
			c, err = t.Jobs.Consumer(ctx, want.Durable)
			if err != nil {
				return fmt.Errorf("queue: consumer %s/%s: %w", t.Config.JobsStream(), want.Durable, err)
			}
			have = c.CachedInfo().Config
		}
		if want.Durable == AnyConsumerName && slices.Equal(consumerFilters(have), t.Config.legacyAnyFilters()) {
			c, err := t.upgradeAnyConsumer(ctx, have)
			if err != nil {
				return err
			}
			have = c.CachedInfo().Config
		}
		if err := t.consumerContract(want, have); err != nil {
			return err
		}
		if have.AckWait == want.AckWait && have.MaxDeliver == want.MaxDeliver && have.MaxAckPending == want.MaxAckPending {
			continue
		}
		have.AckWait, have.MaxDeliver, have.MaxAckPending = want.AckWait, want.MaxDeliver, want.MaxAckPending
		c, err := t.Jobs.UpdateConsumer(ctx, have)
		if err != nil {
			return fmt.Errorf("queue: update consumer %s/%s: %w", t.Config.JobsStream(), want.Durable, err)
		}
		t.cacheConsumer(want.Durable, c)
	}
	return nil
}

func (t *Topology) consumerContract(want, have jetstream.ConsumerConfig) error {
	mismatch := func(field string, w, h any) error {
		return &MismatchError{Resource: "consumer " + t.Config.JobsStream() + "/" + want.Durable, Field: field, Want: w, Have: h}
	}
	if haveFilters, wantFilters := consumerFilters(have), consumerFilters(want); !sameSet(haveFilters, wantFilters) {
		return mismatch("FilterSubject", wantFilters, haveFilters)
	}
	if have.AckPolicy != want.AckPolicy {
		return mismatch("AckPolicy", want.AckPolicy, have.AckPolicy)
	}
	if have.DeliverPolicy != want.DeliverPolicy {
		return mismatch("DeliverPolicy", want.DeliverPolicy, have.DeliverPolicy)
	}
	if have.MemoryStorage != want.MemoryStorage {
		return mismatch("MemoryStorage", want.MemoryStorage, have.MemoryStorage)
	}
	return nil
}
