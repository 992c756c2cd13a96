package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JobsFilter is the stored subject filter of the configured queue's jobs,
// "fleet.job.>" or "fleet.job.<queue>.>": in its jobs stream it matches
// every job (session, partition and any subjects) and no schedule.
func (c Config) JobsFilter() string { return c.jobPrefix() + ">" }

// WaitingJobs reports how many jobs the jobs stream holds (not yet
// delivered, held by an agent, or waiting for a retry) and when the oldest
// of them was stored (zero if none), given si, the stream's info read just
// before. The stream also holds the delayed jobs and periodic schedules,
// which are no jobs until they fire: counted as jobs, a periodic schedule
// would be a job waiting for ever.
//
// The cost does not grow with the jobs: the schedules are counted (two
// requests whose answers list each schedule subject, as Delayed does) and
// taken from the stream's total, and the oldest job is one
// next-message-by-subject lookup. Under change the figures are a snapshot
// of three moments, as any of the stream's numbers are.
func (t *Topology) WaitingJobs(ctx context.Context, si *jetstream.StreamInfo) (uint64, time.Time, error) {
	n := si.State.Msgs
	if slices.ContainsFunc(si.Config.Subjects, IsScheduleSubject) {
		for _, filter := range t.Config.scheduleSubjects() {
			fi, err := t.Jobs.Info(ctx, jetstream.WithSubjectFilter(filter))
			if err != nil {
				return 0, time.Time{}, fmt.Errorf("queue: stream %s: %w", t.Config.JobsStream(), err)
			}
			for _, c := range fi.State.Subjects {
				n -= min(c, n)
			}
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
