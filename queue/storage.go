package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Storage choices beyond the default file store (README "Storage
// choices"): memory-stored job consumers, which a server restart loses and
// which are recreated alike, and a memory-stored results stream.

// memoryConsumersKey is the jobs stream's metadata key that records
// Config.MemoryConsumers.
const memoryConsumersKey = "procfleet_memory_consumers"

func memoryConsumers(sc jetstream.StreamConfig) bool {
	return sc.Metadata[memoryConsumersKey] == "true"
}

// resultsStorage is the results stream's storage (Config.ResultsStorage).
func (c Config) resultsStorage() jetstream.StorageType {
	switch c.ResultsStorage {
	case "file":
		return jetstream.FileStorage
	case "memory":
		return jetstream.MemoryStorage
	}
	return c.Storage
}

// RecreateResultsStream creates the results stream again if it is
// memory-stored (Config.ResultsStorage or Storage "memory") and missing: a
// server restart loses it, and until it is back no result can be stored
// (agents requeue their jobs meanwhile). It reports whether it made it.
func (t *Topology) RecreateResultsStream(ctx context.Context) (bool, error) {
	if t.Config.resultsStorage() != jetstream.MemoryStorage {
		return false, nil
	}
	_, err := t.JS.Stream(ctx, t.Config.ResultsStream())
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return false, fmt.Errorf("queue: stream %s: %w", t.Config.ResultsStream(), err)
	}
	if _, err := ensureStream(ctx, t.JS, t.Config.resultsStreamConfig(), nil); err != nil {
		return false, err
	}
	return true, nil
}

// RecreateMissingConsumers creates again, with Config.MemoryConsumers, the
// job consumers a server restart lost, and returns how many it made. It
// does nothing for file-stored consumers, which a restart keeps: one missing
// there was deleted by someone, and Ensure is the place to make it again.
func (t *Topology) RecreateMissingConsumers(ctx context.Context) (int, error) {
	if !t.Config.MemoryConsumers {
		return 0, nil
	}
	infos, err := t.Consumers(ctx)
	if err != nil {
		return 0, err
	}
	have := make(map[string]bool, len(infos))
	for _, info := range infos {
		have[info.Name] = true
	}
	made := 0
	for _, name := range append(t.partitionConsumerNames(), AnyConsumerName) {
		if have[name] {
			continue
		}
		if err := t.RecreateConsumer(ctx, name); err != nil {
			return made, err
		}
		made++
	}
	return made, nil
}

func (t *Topology) partitionConsumerNames() []string {
	names := make([]string, t.Config.Partitions)
	for p := range names {
		names[p] = PartitionConsumerName(p)
	}
	return names
}

// RecreateConsumer creates the job consumer name ("p-<n>" or "any") again
// with this topology's configuration, if it is missing. With
// Config.MemoryConsumers a server restart loses every job consumer: the
// agents call this when a pull finds theirs gone. An existing consumer is
// left as it is; one that breaks the contract Ensure checks (other
// filters, ack or deliver policy, storage: someone else made it) is a
// *MismatchError. It needs the right to create consumers on the jobs
// stream.
func (t *Topology) RecreateConsumer(ctx context.Context, name string) error {
	var want jetstream.ConsumerConfig
	if name == AnyConsumerName {
		want = t.Config.consumerConfig(AnyConsumerName, t.Config.anyConsumerFilters()...)
	} else {
		p, err := strconv.Atoi(strings.TrimPrefix(name, "p-"))
		if err != nil || name != PartitionConsumerName(p) || p < 0 || p >= t.Config.Partitions {
			return fmt.Errorf("queue: recreate consumer %q: not a job consumer of %s", name, t.Config.JobsStream())
		}
		want = t.Config.consumerConfig(PartitionConsumerName(p), t.Config.PartitionFilter(p))
	}
	c, err := t.Jobs.CreateConsumer(ctx, want)
	if errors.Is(err, jetstream.ErrConsumerExists) {
		// It exists with another configuration (one alike is no error):
		// fine if only what Ensure tunes in place differs (AckWait and the
		// like), not if it would deliver other jobs or otherwise.
		if c, err = t.Jobs.Consumer(ctx, name); err != nil {
			return fmt.Errorf("queue: recreate consumer %s/%s: %w", t.Config.JobsStream(), name, err)
		}
		if err := t.consumerContract(want, c.CachedInfo().Config); err != nil {
			return err // it names the consumer
		}
		t.cacheConsumer(name, c)
		return nil
	}
	if err != nil {
		return fmt.Errorf("queue: recreate consumer %s/%s: %w", t.Config.JobsStream(), name, err)
	}
	t.cacheConsumer(name, c)
	return nil
}
