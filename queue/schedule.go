package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Delayed and periodic jobs are kept by the NATS server's own message
// scheduler (nats-server 2.12 and later), not by a timer of ours: a schedule
// is a message in the jobs stream, on a subject no job consumer takes, whose
// headers say when to publish its body and to which job subject.
//
//   - A delayed job: "<prefix>.delay.<job-id>", header "Nats-Schedule: @at
//     <RFC 3339 time>", "Nats-Schedule-Target: <job subject>". The server
//     publishes the body on the target once, at that time, and removes the
//     schedule.
//   - A periodic job: "<prefix>.schedule.<name>", "Nats-Schedule: @every
//     <duration>" or a cron pattern. Each firing is a new job whose id is
//     FiringID's "<name>-<unix seconds>"; the body carries no id.
//
// The jobs stream captures both subjects and has AllowMsgSchedules; Ensure
// upgrades a stream made before that in place.

// Scheduler headers (nats-server 2.12+).
const (
	ScheduleHeader       = jetstream.ScheduleHeader         // "Nats-Schedule": "@at <time>", "@every <dur>", a cron pattern
	ScheduleTargetHeader = jetstream.ScheduleTargetHeader   // "Nats-Schedule-Target": the job subject
	ScheduleTZHeader     = jetstream.ScheduleTimeZoneHeader // "Nats-Schedule-Time-Zone": an IANA zone, cron only
	SchedulerHeader      = jetstream.SchedulerHeader        // set by the server on a firing: the schedule's subject
	ScheduleNextHeader   = jetstream.ScheduleNextHeader     // set by the server on a firing: next time, or "purge"
)

// MinScheduleEvery is the shortest interval of a periodic schedule (the
// server's floor).
const MinScheduleEvery = time.Second

var (
	// ErrScheduleNotFound means no schedule has that name.
	ErrScheduleNotFound = errors.New("queue: schedule not found")
	// ErrScheduleExists means a schedule of that name exists (remove it
	// first, or replace it).
	ErrScheduleExists = errors.New("queue: schedule exists")
	// ErrSchedulesUnsupported means the jobs stream cannot schedule
	// messages: the server is older than 2.12, or the stream was made before
	// procfleet used schedules and nobody with the right to update it has run
	// Ensure (`dispatcher serve`) since.
	ErrSchedulesUnsupported = errors.New("queue: the jobs stream does not allow message schedules (they are off by default: run `dispatcher serve --schedules`, on nats-server 2.12 or later, to turn them on)")
)

// ScheduleSubject is where the periodic schedule name lives,
// "fleet.schedule.<name>".
func (c Config) ScheduleSubject(name string) string {
	return c.Prefix + ".schedule." + c.scheduleQueueToken() + name
}

// DelaySubject is where the delayed job id waits, "fleet.delay.<id>".
func (c Config) DelaySubject(id string) string {
	return c.Prefix + ".delay." + c.scheduleQueueToken() + id
}

// scheduleQueueToken puts a queue's schedules under their own subjects: a
// schedule must live in the stream of the job subject it targets, and
// schedule subjects of two streams must not overlap. The default queue's
// are "fleet.delay.<id>" and "fleet.schedule.<name>"; with named queues
// (one jobs stream each) this returns "<queue>." for a queue other than the
// default, giving "fleet.delay.<queue>.<id>".
func (c Config) scheduleQueueToken() string {
	if c.IsDefaultQueue() {
		return ""
	}
	// Each queue's jobs stream takes its own schedule subjects, which must
	// not overlap another queue's.
	return c.Queue + "."
}

// IsScheduleSubject reports whether a stream subject is a schedule subject
// ("<prefix>.schedule..." or "<prefix>.delay..."), by its second token.
func IsScheduleSubject(subject string) bool {
	_, rest, _ := strings.Cut(subject, ".")
	second, _, _ := strings.Cut(rest, ".")
	return second == "schedule" || second == "delay"
}

// scheduleSubjects are the jobs stream's subjects that hold schedules; no
// job consumer's filter matches them, so the work queue keeps them until the
// server fires or a user removes them.
func (c Config) scheduleSubjects() []string {
	return []string{c.ScheduleSubject("*"), c.DelaySubject("*")}
}

// withSchedules adds the schedule subjects and flags to a jobs stream
// configuration. The server refuses schedules on a stream that discards new
// messages when full; such a stream (a queue with message or byte limits,
// which must refuse jobs rather than drop them) gets no schedules. Without
// limits the discard policy never applies, and is set to the server's
// default.
func (c Config) withSchedules(sc jetstream.StreamConfig) jetstream.StreamConfig {
	if !c.Schedules {
		return sc
	}
	if sc.Discard == jetstream.DiscardNew && (sc.MaxMsgs > 0 || sc.MaxBytes > 0) {
		return sc
	}
	sc.Discard = jetstream.DiscardOld
	sc.Subjects = append(slices.Clone(sc.Subjects), c.scheduleSubjects()...)
	sc.AllowMsgSchedules = true
	sc.AllowRollup = true // a schedule replaces the last one on its subject
	return sc
}

// withoutScheduleSubjects drops the schedule subjects, so that a stream
// from before schedules still passes the contract check (Open must work
// against it; Ensure upgrades it).
func withoutScheduleSubjects(subjects []string) []string {
	return slices.DeleteFunc(slices.Clone(subjects), IsScheduleSubject)
}

// upgradeSchedules turns message schedules on in have when want has them;
// it reports whether it changed have. The server cannot turn them off again.
func upgradeSchedules(want jetstream.StreamConfig, have *jetstream.StreamConfig) bool {
	if !want.AllowMsgSchedules || (have.AllowMsgSchedules && sameSet(want.Subjects, have.Subjects)) {
		return false
	}
	have.Subjects = slices.Clone(want.Subjects)
	have.AllowMsgSchedules, have.AllowRollup, have.DenyPurge, have.Discard = true, true, false, want.Discard
	return true
}

// SchedulesAllowed reports whether the jobs stream can hold schedules (see
// ErrSchedulesUnsupported), as it was when the topology was opened.
func (t *Topology) SchedulesAllowed() bool {
	cfg := t.Jobs.CachedInfo().Config
	return cfg.AllowMsgSchedules && slices.Contains(cfg.Subjects, t.Config.DelaySubject("*"))
}

// schedulesAllowed is SchedulesAllowed, asking the server again when the
// cached answer is no: Ensure may have upgraded the stream since.
func (t *Topology) schedulesAllowed(ctx context.Context) bool {
	if t.SchedulesAllowed() {
		return true
	}
	_, _ = t.Jobs.Info(ctx) // refreshes CachedInfo
	return t.SchedulesAllowed()
}

// SubmitAt publishes job for session ("" for an anonymous job) to be
// delivered at at, and not before: the server's scheduler holds it under
// DelaySubject and publishes it on the job subject then. The id is
// generated if empty and is the schedule's Nats-Msg-Id, so a resubmission
// within the dedup window is a duplicate. at may be up to a second in the
// past (clock skew); earlier, or more than MaxDelay ahead, is a bad
// request. The returned ack is the schedule's, not the job's: the job gets
// its stream sequence when it fires.
func (t *Topology) SubmitAt(ctx context.Context, session string, job *Job, at time.Time) (*jetstream.PubAck, error) {
	if at.IsZero() {
		return nil, &BadRequestError{Session: session, Reason: "delay time is missing"}
	}
	if late := time.Since(at); late > time.Second {
		return nil, &BadRequestError{JobID: jobIDOf(job), Session: session,
			Reason: fmt.Sprintf("delay time %s is %v in the past", at.UTC().Format(time.RFC3339), late.Round(time.Second))}
	}
	if time.Until(at) > MaxDelay {
		// The server's scheduler counts in nanoseconds since 1970: a time
		// past 2262 overflows there and fires at once.
		return nil, &BadRequestError{JobID: jobIDOf(job), Session: session,
			Reason: fmt.Sprintf("delay time %s is more than %d years ahead", at.UTC().Format(time.RFC3339), MaxDelay/(365*24*time.Hour))}
	}
	msg, err := t.jobMsg(session, job)
	if err != nil {
		return nil, err
	}
	if !t.schedulesAllowed(ctx) {
		return nil, fmt.Errorf("queue: submit job %s: %w", job.ID, ErrSchedulesUnsupported)
	}
	target := msg.Subject
	msg.Subject = t.Config.DelaySubject(job.ID)
	// Sub-second precision: the server parses fractional seconds, and a
	// truncated time would fire up to a second early.
	msg.Header.Set(ScheduleHeader, "@at "+at.UTC().Format(time.RFC3339Nano))
	msg.Header.Set(ScheduleTargetHeader, target)
	ack, err := t.JS.PublishMsg(ctx, msg, jetstream.WithMsgID(job.ID))
	if err != nil {
		return nil, fmt.Errorf("queue: submit delayed job %s: %w", job.ID, scheduleErr(err))
	}
	return ack, nil
}

// MaxDelay bounds how far ahead SubmitAt takes a job: 10 years.
const MaxDelay = 10 * 365 * 24 * time.Hour

func jobIDOf(j *Job) string {
	if j == nil {
		return ""
	}
	return j.ID
}

func scheduleErr(err error) error {
	if errors.Is(err, jetstream.ErrMessageSchedulesDisabled) {
		return fmt.Errorf("%w: %w", ErrSchedulesUnsupported, err)
	}
	return err
}

// Schedule is a periodic job: every Every, or on the Cron pattern, the
// server publishes Job for Session as a new job with id FiringID.
type Schedule struct {
	// Name is the schedule's id, a token ([A-Za-z0-9_-], 1-128). Firings
	// are "<name>-<unix seconds>", so keep it short enough for that.
	Name    string `json:"name"`
	Session string `json:"session,omitempty"`
	// Every is a Go duration ("1h", "90s"), at least 1s. Exactly one of
	// Every and Cron is set.
	Every string `json:"every,omitempty"`
	// Cron is a cron pattern: 5 fields (minute hour day month weekday; the
	// second is 0), 6 fields (with seconds first), or @hourly, @daily,
	// @weekly, @monthly, @yearly.
	Cron string `json:"cron,omitempty"`
	// TimeZone is an IANA zone for Cron (default UTC).
	TimeZone string `json:"time_zone,omitempty"`
	// Job is the job each firing runs. It has no id: each firing gets its
	// own.
	Job *Job `json:"job"`
}

// ScheduleInfo is a stored schedule: a periodic one (Kind "every" or
// "cron") or a delayed job waiting (Kind "at").
type ScheduleInfo struct {
	Kind    string    `json:"kind"`
	Name    string    `json:"name"` // the schedule's name; for a delayed job its id
	Pattern string    `json:"pattern"`
	Target  string    `json:"target"`
	Session string    `json:"session,omitempty"`
	Command string    `json:"command,omitempty"`
	Created time.Time `json:"created"`
	// Next is when it fires next, computed from the pattern (zero when it
	// cannot be): the server may fire a little later under load.
	Next time.Time `json:"next,omitzero"`
	Seq  uint64    `json:"seq"`
}

// Pattern returns the Nats-Schedule value for s, checking it.
func (s *Schedule) Pattern() (string, error) {
	switch {
	case s.Every != "" && s.Cron != "":
		return "", errors.New("set one of every and cron, not both")
	case s.Every != "":
		d, err := time.ParseDuration(s.Every)
		if err != nil {
			return "", fmt.Errorf("every %q is not a duration (e.g. 90s, 1h)", s.Every)
		}
		if d < MinScheduleEvery {
			return "", fmt.Errorf("every %v is below the minimum of %v", d, MinScheduleEvery)
		}
		if s.TimeZone != "" {
			return "", errors.New("time_zone applies to cron only")
		}
		return "@every " + d.String(), nil
	case s.Cron != "":
		pattern, err := cronPattern(s.Cron)
		if err != nil {
			return "", err
		}
		if s.TimeZone != "" {
			if _, err := time.LoadLocation(s.TimeZone); err != nil {
				return "", fmt.Errorf("time_zone %q: %v", s.TimeZone, err)
			}
		}
		return pattern, nil
	}
	return "", errors.New("set every or cron")
}

// cronPattern normalises a 5-field pattern to the server's 6 fields and
// checks it.
func cronPattern(p string) (string, error) {
	p = strings.TrimSpace(p)
	if strings.HasPrefix(p, "@") {
		switch p {
		case "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly":
			return p, nil
		}
		return "", fmt.Errorf("cron %q: unknown shorthand (use @hourly, @daily, @weekly, @monthly or @yearly)", p)
	}
	fields := strings.Fields(p)
	switch len(fields) {
	case 5:
		fields = append([]string{"0"}, fields...)
	case 6:
	default:
		return "", fmt.Errorf("cron %q has %d fields, want 5 (minute hour day month weekday) or 6 (seconds first)", p, len(fields))
	}
	norm := strings.Join(fields, " ")
	if _, err := parseCron(norm); err != nil {
		return "", fmt.Errorf("cron %q: %v", p, err)
	}
	return norm, nil
}

// AddSchedule stores a periodic schedule. Without replace an existing
// schedule of that name is ErrScheduleExists; with it, the new one replaces
// it (the server keeps one schedule per subject).
func (t *Topology) AddSchedule(ctx context.Context, s *Schedule, replace bool) (*jetstream.PubAck, error) {
	if s == nil {
		return nil, &BadRequestError{Reason: "schedule is nil"}
	}
	bad := func(format string, args ...any) error {
		return &BadRequestError{Session: s.Session, Reason: fmt.Sprintf(format, args...)}
	}
	if !ValidToken(s.Name) {
		return nil, bad("schedule name %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(s.Name))
	}
	if len(s.Name) > maxScheduleName {
		return nil, bad("schedule name %q is longer than %d characters (its firings are named <name>-<unix seconds>)", truncate(s.Name), maxScheduleName)
	}
	pattern, err := s.Pattern()
	if err != nil {
		return nil, bad("schedule %s: %v", s.Name, err)
	}
	if s.Job == nil {
		return nil, bad("schedule %s has no job", s.Name)
	}
	if s.Job.ID != "" {
		return nil, bad("schedule %s: the job must have no id (each firing is named <name>-<unix seconds>)", s.Name)
	}
	job := *s.Job
	msg, err := t.jobMsg(s.Session, &job)
	if err != nil {
		return nil, err
	}
	// jobMsg generated an id for the body: a firing must not carry one.
	job.ID = ""
	if msg.Data, err = json.Marshal(&job); err != nil {
		return nil, fmt.Errorf("queue: encode schedule %s: %w", s.Name, err)
	}
	if !t.schedulesAllowed(ctx) {
		return nil, fmt.Errorf("queue: add schedule %s: %w", s.Name, ErrSchedulesUnsupported)
	}
	target := msg.Subject
	msg.Subject = t.Config.ScheduleSubject(s.Name)
	msg.Header.Set(ScheduleHeader, pattern)
	msg.Header.Set(ScheduleTargetHeader, target)
	if s.TimeZone != "" {
		msg.Header.Set(ScheduleTZHeader, s.TimeZone)
	}
	var opts []jetstream.PublishOpt
	if !replace {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(0))
	}
	ack, err := t.JS.PublishMsg(ctx, msg, opts...)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return nil, fmt.Errorf("%w: %s (remove it first, or replace it)", ErrScheduleExists, s.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: add schedule %s: %w", s.Name, scheduleErr(err))
	}
	return ack, nil
}

// maxScheduleName leaves room for "-<unix seconds>" in a 128-character id.
const maxScheduleName = 100

// RemoveSchedule deletes the periodic schedule name; it fires no more. A
// name that does not exist is ErrScheduleNotFound.
func (t *Topology) RemoveSchedule(ctx context.Context, name string) error {
	return t.removeScheduled(ctx, t.Config.ScheduleSubject(name), name)
}

// RemoveDelayed deletes the delayed job id before it fires; one that fired
// already (or never existed) is ErrScheduleNotFound.
func (t *Topology) RemoveDelayed(ctx context.Context, id string) error {
	return t.removeScheduled(ctx, t.Config.DelaySubject(id), id)
}

func (t *Topology) removeScheduled(ctx context.Context, subject, name string) error {
	if !ValidToken(name) {
		return &BadRequestError{Reason: fmt.Sprintf("schedule name %q must be 1-128 characters of [A-Za-z0-9_-]", truncate(name))}
	}
	m, err := t.Jobs.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: %s", ErrScheduleNotFound, name)
	}
	if err != nil {
		return fmt.Errorf("queue: schedule %s: %w", name, err)
	}
	// The server drops a deleted schedule when it would fire.
	if err := t.Jobs.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("queue: remove schedule %s: %w", name, err)
	}
	return nil
}

// Schedules lists the periodic schedules, by name, with when each fires
// next.
func (t *Topology) Schedules(ctx context.Context) ([]ScheduleInfo, error) {
	return t.listScheduled(ctx, t.Config.ScheduleSubject("*"))
}

// MaxDelayedScan bounds the delayed jobs Delayed reads (one request each):
// above it, only their number is reported.
const MaxDelayedScan = 1000

// Delayed lists up to limit delayed jobs that have not fired yet (0: all),
// soonest first, and how many wait in all. With more than MaxDelayedScan
// waiting the list is empty and only the number is reported.
func (t *Topology) Delayed(ctx context.Context, limit int) ([]ScheduleInfo, int, error) {
	si, err := t.Jobs.Info(ctx, jetstream.WithSubjectFilter(t.Config.DelaySubject("*")))
	if err != nil {
		return nil, 0, fmt.Errorf("queue: stream %s: %w", t.Config.JobsStream(), err)
	}
	if n := len(si.State.Subjects); n > MaxDelayedScan {
		return []ScheduleInfo{}, n, nil
	}
	all, err := t.listScheduled(ctx, t.Config.DelaySubject("*"))
	if err != nil {
		return nil, 0, err
	}
	slices.SortStableFunc(all, func(a, b ScheduleInfo) int { return a.Next.Compare(b.Next) })
	n := len(all)
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	return all, n, nil
}

func (t *Topology) listScheduled(ctx context.Context, filter string) ([]ScheduleInfo, error) {
	si, err := t.Jobs.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", t.Config.JobsStream(), err)
	}
	subjects := make([]string, 0, len(si.State.Subjects))
	for s := range si.State.Subjects {
		subjects = append(subjects, s)
	}
	slices.Sort(subjects)
	out := make([]ScheduleInfo, 0, len(subjects))
	now := time.Now()
	for _, subj := range subjects {
		m, err := t.Jobs.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // fired or removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("queue: schedule %s: %w", subj, err)
		}
		out = append(out, t.scheduleInfo(m, now))
	}
	return out, nil
}

func (t *Topology) scheduleInfo(m *jetstream.RawStreamMsg, now time.Time) ScheduleInfo {
	pattern := m.Header.Get(ScheduleHeader)
	target := m.Header.Get(ScheduleTargetHeader)
	info := ScheduleInfo{
		Name:    m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], // the last token, with or without a queue token
		Pattern: pattern, Target: target, Created: m.Time, Seq: m.Sequence,
	}
	if session, ok := t.Config.jobSubject(target); ok {
		info.Session = session
	}
	var j struct {
		Command string `json:"command"`
	}
	if json.Unmarshal(m.Data, &j) == nil {
		info.Command = j.Command
	}
	switch {
	case strings.HasPrefix(pattern, "@at "):
		info.Kind = "at"
		info.Next, _ = time.Parse(time.RFC3339, pattern[4:])
	case strings.HasPrefix(pattern, "@every "):
		info.Kind = "every"
		if d, err := time.ParseDuration(pattern[7:]); err == nil && d > 0 {
			info.Next = nextEvery(m.Time, d, now)
		}
	default:
		info.Kind = "cron"
		loc := time.UTC
		if tz := m.Header.Get(ScheduleTZHeader); tz != "" {
			if l, err := time.LoadLocation(tz); err == nil {
				loc = l
			}
		}
		if c, err := parseCron(expandCronShorthand(pattern)); err == nil {
			info.Next = c.next(now, loc)
		}
	}
	return info
}

// nextEvery mirrors the server: the first firing is the store time rounded
// to the second plus d, then every d.
func nextEvery(stored time.Time, d time.Duration, now time.Time) time.Time {
	first := stored.UTC().Round(time.Second).Add(d)
	if !first.Before(now) {
		return first
	}
	k := (now.Sub(first) + d - 1) / d
	return first.Add(k * d)
}

// FiringID is the id of a job a periodic schedule fired: "<name>-<unix
// seconds of the firing>", where the firing's time is the message's
// stream timestamp (the same on every redelivery). It reports false for a
// message no periodic schedule of this fleet fired.
func (c Config) FiringID(hdr nats.Header, stored time.Time) (string, bool) {
	scheduler := hdr.Get(SchedulerHeader)
	name, ok := strings.CutPrefix(scheduler, c.ScheduleSubject(""))
	if !ok || !ValidToken(name) || stored.IsZero() {
		return "", false
	}
	return name + "-" + strconv.FormatInt(stored.Unix(), 10), true
}

// SeqID is the id a message without body id or Nats-Msg-Id is filed under.
func SeqID(streamSeq uint64) string { return "seq-" + strconv.FormatUint(streamSeq, 10) }
