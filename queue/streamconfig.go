package queue

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream and bucket configurations.

func (c Config) jobsStreamConfig() jetstream.StreamConfig {
	var meta map[string]string
	if c.MemoryConsumers {
		meta = map[string]string{memoryConsumersKey: "true"}
	}
	return c.withSchedules(jetstream.StreamConfig{
		Metadata:    meta,
		Name:        c.JobsStream(),
		Description: "procfleet jobs, session jobs filed by partition",
		Subjects:    []string{c.sessionWildcard(), c.AnySubject()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     c.jobsStorage(),
		Replicas:    c.jobsReplicas(),
		Duplicates:  c.DedupWindow,
		MaxMsgs:     limitOrUnlimited(c.Limits.MaxMsgs),
		MaxBytes:    limitOrUnlimited(c.Limits.MaxBytes),
		// A full queue refuses new jobs; it never drops waiting ones.
		Discard: jetstream.DiscardNew,
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      c.sessionWildcard(),
			Destination: c.partitionTransform(),
		},
	})
}

// limitOrUnlimited maps 0 (unlimited in QueueLimits) to the server's -1.
func limitOrUnlimited(n int64) int64 {
	if n <= 0 {
		return -1
	}
	return n
}

func (c Config) resultsStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.ResultsStream(),
		Description: "procfleet job results, one per job id",
		Subjects:    []string{c.ResultSubject("*")},
		Retention:   jetstream.LimitsPolicy,
		Storage:     c.resultsStorage(),
		Replicas:    c.Replicas,
		MaxAge:      c.ResultsMaxAge,
		Duplicates:  c.ResultsDedup,
		AllowDirect: true, // GetResult is a direct get, answered without the API layer
	}
}

func (c Config) dlqStreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        c.DLQStream(),
		Description: "procfleet dead letters: the original job and why it died",
		Subjects:    []string{c.DLQSubject("*")},
		Retention:   jetstream.LimitsPolicy,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
		Duplicates:  c.DedupWindow,
		AllowDirect: true,
	}
}

func (c Config) agentsBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      c.AgentsBucket(),
		Description: "procfleet agent registry; entries expire unless heartbeated",
		History:     1,
		TTL:         c.AgentTTL,
		// An agent's departure stays visible as long as its leases may
		// live on, so that a watch opened late (a restart, a reconnect)
		// still learns when it went and may take them (TakeLease).
		LimitMarkerTTL: c.AgentTTL + c.LeaseTTL,
		Storage:        c.Storage,
		Replicas:       c.Replicas,
	}
}

func (c Config) leasesBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      c.LeasesBucket(),
		Description: "procfleet partition leases; a lease expires unless renewed",
		History:     1,
		// The bucket-wide TTL, not a per-key TTL: a key's own TTL is dropped
		// by the Update that renews it.
		TTL: c.LeaseTTL,
		// Markers make expiries visible to watchers and let Create succeed
		// on an expired key.
		LimitMarkerTTL: c.LeaseTTL,
		Storage:        c.Storage,
		Replicas:       c.Replicas,
	}
}

// PoisonTTL is how long the record of a job's worker deaths is kept after
// its last write. A key is written only when a worker dies running the job,
// so the bucket is empty at rest.
const PoisonTTL = 24 * time.Hour

func (c Config) poisonBucketConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      c.PoisonBucket(),
		Description: "procfleet worker deaths per job (key <stream>.<sequence>), for the agents' poison guard",
		History:     1,
		TTL:         PoisonTTL,
		Storage:     c.Storage,
		Replicas:    c.Replicas,
	}
}

// OpenPoison binds to the poison bucket that Ensure creates; it returns
// ErrNoTopology if the bucket is missing (a topology made by an older
// version: Ensure adds it).
func OpenPoison(ctx context.Context, js jetstream.JetStream, cfg Config) (jetstream.KeyValue, error) {
	kv, _, err := openBucket(ctx, js, cfg.WithDefaults().PoisonBucket())
	return kv, err
}

// consumerConfig is a job consumer's configuration; a consumer with more
// than one filter gets FilterSubjects.
func (c Config) consumerConfig(name string, filters ...string) jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		MaxAckPending: c.MaxAckPending,
		MemoryStorage: c.MemoryConsumers,
	}
	if len(filters) == 1 {
		cc.FilterSubject = filters[0]
	} else {
		cc.FilterSubjects = filters
	}
	return cc
}

// anyConsumerFilters are the filters of the shared consumer: anonymous jobs,
// and session subjects the stream stored untransformed. The partition
// transform only applies to a literal session token; a job published on
// "<prefix>.job.s.*" or "<prefix>.job.s.>" is stored as it is, and without
// this filter no consumer would ever take it. The agent that does
// dead-letters it (an invalid session) with a bad_request result. Neither
// filter overlaps a partition's "<prefix>.job.p.<n>.*".
func (c Config) anyConsumerFilters() []string {
	return []string{c.AnySubject(), c.jobPrefix() + "s.>"}
}

// legacyAnyFilters are the shared consumer's filters before the
// untransformed session subjects were added; Ensure (and, where it may,
// Open) upgrades such a consumer in place.
func (c Config) legacyAnyFilters() []string { return []string{c.AnySubject()} }

func consumerFilters(cc jetstream.ConsumerConfig) []string {
	fs := slices.Clone(cc.FilterSubjects)
	if cc.FilterSubject != "" {
		fs = append([]string{cc.FilterSubject}, fs...)
	}
	return fs
}

// upgradeAnyConsumer gives a shared consumer created with the legacy filter
// the current ones.
func (t *Topology) upgradeAnyConsumer(ctx context.Context, have jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	have.FilterSubject, have.FilterSubjects = "", t.Config.anyConsumerFilters()
	c, err := t.Jobs.UpdateConsumer(ctx, have)
	if err != nil {
		return nil, fmt.Errorf("queue: update consumer %s/%s filters: %w", t.Config.JobsStream(), have.Durable, err)
	}
	t.cacheConsumer(have.Durable, c)
	return c, nil
}
