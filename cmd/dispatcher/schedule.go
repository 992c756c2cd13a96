package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// steerFlags are submit's flags for delay and deadline.
type steerFlags struct {
	at, in    string
	expiresAt string
	expiresIn time.Duration
}

func (s *steerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.at, "at", "", "deliver the job at this RFC 3339 time (e.g. 2026-01-02T02:00:00Z), not before")
	fs.StringVar(&s.in, "in", "", "deliver the job after this delay (e.g. 90s, 2h), not before")
	fs.StringVar(&s.expiresAt, "expires-at", "", "deadline (RFC 3339): delivered after it, the job ends expired without running")
	fs.DurationVar(&s.expiresIn, "expires-in", 0, "deadline counted from when the job is queued (its ttl_ms; for a delayed job, from when it is due)")
}

// apply sets the deadline fields of job.
func (s *steerFlags) apply(job *queue.Job) {
	job.ExpiresAt = s.expiresAt
	job.TTLMS = s.expiresIn.Milliseconds()
}

// due reads --at or --in; the zero time means now.
func (s *steerFlags) due(now time.Time) (time.Time, error) {
	switch {
	case s.at != "" && s.in != "":
		return time.Time{}, errors.New("set one of --at and --in")
	case s.at != "":
		t, err := time.Parse(time.RFC3339Nano, s.at)
		if err != nil {
			return time.Time{}, fmt.Errorf("--at %q is not an RFC 3339 time like 2026-01-02T02:00:00Z", s.at)
		}
		return t, nil
	case s.in != "":
		d, err := time.ParseDuration(s.in)
		if err != nil || d <= 0 {
			return time.Time{}, fmt.Errorf("--in %q is not a positive duration like 90s or 2h", s.in)
		}
		return now.Add(d), nil
	}
	return time.Time{}, nil
}

const scheduleHelp = `schedule add NAME (--every DUR | --cron "M H DOM MON DOW") [--session S] --command C [--payload JSON] [--replace]
       dispatcher schedule list [--json]
       dispatcher schedule rm NAME`

func cmdSchedule(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("schedule", scheduleHelp, stderr)
	c.register(fs)
	every := fs.Duration("every", 0, "add: fire every DUR (at least 1s)")
	cron := fs.String("cron", "", `add: fire on a cron pattern, 5 fields (minute hour day month weekday) or 6 (seconds first), or @hourly, @daily, ...`)
	tz := fs.String("tz", "", "add: IANA time zone for --cron (default UTC)")
	session := fs.String("session", "", "add: the session each firing runs in (empty: any agent)")
	command := fs.String("command", "", "add: the worker command each firing runs")
	payload := fs.String("payload", "null", "add: JSON payload")
	timeout := fs.Duration("timeout", 0, "add: job timeout (default: the agent's)")
	attempts := fs.Int("max-attempts", 0, "add: attempts per firing")
	expiresIn := fs.Duration("expires-in", 0, "add: a firing not started within this long after it fired ends expired")
	replace := fs.Bool("replace", false, "add: replace a schedule of the same name")
	asJSON := fs.Bool("json", false, "list: print JSON")
	if err := cli.ParseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("schedule needs add, list or rm")
	}
	sub, rest := fs.Arg(0), fs.Args()[1:]
	switch {
	case sub != "add" && sub != "list" && sub != "rm":
		return fmt.Errorf("schedule: unknown subcommand %q (add, list or rm)", sub)
	case sub == "list" && len(rest) > 0:
		return fmt.Errorf("schedule list: unexpected argument %q", rest[0])
	case sub != "list" && len(rest) != 1:
		return fmt.Errorf("schedule %s needs exactly one NAME", sub)
	}
	var s *queue.Schedule
	if sub == "add" {
		if *command == "" {
			return errors.New("schedule add: --command is required")
		}
		if !json.Valid([]byte(*payload)) {
			return fmt.Errorf("--payload is not valid JSON: %s", *payload)
		}
		s = &queue.Schedule{Name: rest[0], Session: *session, Cron: *cron, TimeZone: *tz,
			Job: &queue.Job{Command: *command, Payload: json.RawMessage(*payload), TimeoutMS: timeout.Milliseconds(),
				MaxAttempts: *attempts, TTLMS: expiresIn.Milliseconds()}}
		if *every != 0 {
			s.Every = every.String()
		}
		// Check before connecting: a typo gets its answer at once.
		if _, err := s.Pattern(); err != nil {
			return fmt.Errorf("schedule add %s: %w", s.Name, err)
		}
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	switch sub {
	case "add":
		if err := client.AddSchedule(ctx, s, *replace); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schedule %s added\n", s.Name)
		return nil
	case "rm":
		if err := client.RemoveSchedule(ctx, rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schedule %s removed\n", rest[0])
		return nil
	}
	list, err := client.Schedules(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if list == nil {
			list = []queue.ScheduleInfo{}
		}
		return enc.Encode(list)
	}
	return dispatcher.WriteSchedules(stdout, list, time.Now())
}
