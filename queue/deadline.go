package queue

import (
	"fmt"
	"time"
)

// MaxTTLMS is the largest ttl_ms a job may carry: 30 days.
const MaxTTLMS = 30 * 24 * 60 * 60 * 1000

// KindExpired is the error kind of a job delivered after its deadline
// (expires_at, or ttl_ms after it entered the queue): it never reached a
// worker, is acked and is not retried nor dead-lettered.
const KindExpired = "expired"

// checkDeadline validates expires_at and ttl_ms.
func checkDeadline(j *Job) string {
	switch {
	case j.TTLMS < 0 || j.TTLMS > MaxTTLMS:
		return fmt.Sprintf("field \"ttl_ms\" must be between 0 and %d (30 days), got %d", MaxTTLMS, j.TTLMS)
	case j.ExpiresAt != "" && j.TTLMS != 0:
		return "set one of \"expires_at\" and \"ttl_ms\", not both"
	case j.ExpiresAt != "":
		if _, err := time.Parse(time.RFC3339Nano, j.ExpiresAt); err != nil {
			return fmt.Sprintf("field \"expires_at\" must be an RFC 3339 time like 2026-01-02T15:04:05Z, got %q", truncate(j.ExpiresAt))
		}
	}
	return ""
}

// Deadline returns when the job expires, given when it entered the queue
// (its stream timestamp; for a delayed or periodic job, when it fired), and
// whether it has a deadline at all.
func (j *Job) Deadline(enqueued time.Time) (time.Time, bool) {
	switch {
	case j.ExpiresAt != "":
		t, err := time.Parse(time.RFC3339Nano, j.ExpiresAt)
		return t, err == nil
	case j.TTLMS > 0:
		return enqueued.Add(time.Duration(j.TTLMS) * time.Millisecond), true
	}
	return time.Time{}, false
}

// Expired reports whether the job's deadline has passed at now, and the
// message of its expired result.
func (j *Job) Expired(enqueued, now time.Time) (string, bool) {
	d, ok := j.Deadline(enqueued)
	if !ok || now.Before(d) {
		return "", false
	}
	late := now.Sub(d)
	if late > time.Minute {
		late = late.Round(time.Second)
	} else {
		late = late.Round(time.Millisecond)
	}
	return fmt.Sprintf("job expired at %s, %v before it could start; it never ran",
		d.UTC().Format(time.RFC3339Nano), late), true
}
