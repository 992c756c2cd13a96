package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JobsFilter is the stored subject filter of the configured queue's jobs,
// "fleet.job.>" or "fleet.job.<queue>.>": in its jobs stream it matches
// every job (session, partition and any subjects) and no schedule.
func (c Config) JobsFilter() string { return c.jobPrefix() + ">" }

// Consumers lists the jobs stream's consumers.
func (t *Topology) Consumers(ctx context.Context) ([]*jetstream.ConsumerInfo, error) {
	var out []*jetstream.ConsumerInfo
	lister := t.Jobs.ListConsumers(ctx)
	for info := range lister.Info() {
		out = append(out, info)
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("queue: list consumers of %s: %w", t.Config.JobsStream(), err)
	}
	return out, nil
}

// WaitingJobs reports how many jobs the jobs stream holds (not yet
// delivered, held by an agent, or waiting for a retry) and when the oldest
// of them was stored (zero if none), given si, the stream's info, and
// consumers, its consumers (Consumers), both read just before. The stream
// also holds the delayed jobs and periodic schedules, which are no jobs
// until they fire: counted as jobs, a periodic schedule would be a job
// waiting for ever.
//
// Every job is in exactly one job consumer's care (its partition's, or
// the anonymous one), as not yet delivered or not yet acked, so the count
// is the sum of theirs: one consumer list, whatever the number of delayed
// jobs (counting the schedule subjects instead cost half a second per call
// with 150 000 of them). A job stored a moment ago may not be counted yet,
// and jobs of a consumer that does not exist (memory-stored consumers lost
// with a server restart, until they are made again) are not. The oldest job
// is one next-message-by-subject lookup.
func (t *Topology) WaitingJobs(ctx context.Context, si *jetstream.StreamInfo, consumers []*jetstream.ConsumerInfo) (uint64, time.Time, error) {
	var n uint64
	for _, info := range consumers {
		if t.Config.isJobConsumer(info.Name) {
			n += info.NumPending + uint64(info.NumAckPending)
		}
	}
	if n == 0 {
		return 0, time.Time{}, nil
	}
	m, err := t.Jobs.GetMsg(ctx, si.State.FirstSeq, jetstream.WithGetMsgSubject(t.Config.JobsFilter()))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return n, time.Time{}, nil // taken meanwhile
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("queue: stream %s: oldest job: %w", t.Config.JobsStream(), err)
	}
	return n, m.Time, nil
}

// isJobConsumer reports whether name is one of the queue's job consumers:
// a partition's or the anonymous one.
func (c Config) isJobConsumer(name string) bool {
	if name == AnyConsumerName {
		return true
	}
	p, ok := strings.CutPrefix(name, "p-")
	if !ok {
		return false
	}
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n < c.WithDefaults().Partitions && PartitionConsumerName(n) == name
}
