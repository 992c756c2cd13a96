package dispatcher

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// SubmitAt publishes job (session "" for an anonymous job) to be delivered
// at at, and not before, through the NATS server's message scheduler; it
// returns the job's id. Resubmitting the same id within the dedup window is
// a no-op. The job gets its stream sequence only when it fires, so wait for
// its result with Result (any sequence).
func (c *Client) SubmitAt(ctx context.Context, session string, job *queue.Job, at time.Time) (string, error) {
	if _, err := c.topo.SubmitAt(ctx, session, job, at); err != nil {
		return "", err
	}
	return job.ID, nil
}

// SubmitIn is SubmitAt(now + d); d must be positive.
func (c *Client) SubmitIn(ctx context.Context, session string, job *queue.Job, d time.Duration) (string, error) {
	if d <= 0 {
		return "", &queue.BadRequestError{Session: session, Reason: fmt.Sprintf("delay %v must be positive", d)}
	}
	return c.SubmitAt(ctx, session, job, time.Now().Add(d))
}

// AddSchedule stores a periodic job (see queue.Schedule). Without replace a
// schedule of that name that exists is queue.ErrScheduleExists.
func (c *Client) AddSchedule(ctx context.Context, s *queue.Schedule, replace bool) error {
	_, err := c.topo.AddSchedule(ctx, s, replace)
	return err
}

// RemoveSchedule stops and deletes the periodic schedule name
// (queue.ErrScheduleNotFound if there is none).
func (c *Client) RemoveSchedule(ctx context.Context, name string) error {
	return c.topo.RemoveSchedule(ctx, name)
}

// Schedules lists the periodic schedules with when each fires next.
func (c *Client) Schedules(ctx context.Context) ([]queue.ScheduleInfo, error) {
	return c.topo.Schedules(ctx)
}

// Delayed lists up to limit delayed jobs not yet due (0: all), soonest
// first, and how many wait in all.
func (c *Client) Delayed(ctx context.Context, limit int) ([]queue.ScheduleInfo, int, error) {
	return c.topo.Delayed(ctx, limit)
}

// statusDelayedShown is how many delayed jobs Status lists.
const statusDelayedShown = 20

// ScheduleStatus is the schedules part of Status.
type ScheduleStatus struct {
	Schedules []queue.ScheduleInfo `json:"schedules"`     // periodic schedules, by name
	Delayed   []queue.ScheduleInfo `json:"delayed"`       // the soonest delayed jobs not yet due
	NDelayed  int                  `json:"delayed_total"` // delayed jobs not yet due, in all
	// Error says why the schedules could not be read (e.g. a user without
	// the right to read FLEET_JOBS messages); the rest of Status stands.
	Error string `json:"error,omitempty"`
}

// scheduleStatus fills in the schedules of st, or says why it could not.
// The jobs stream's message count includes the schedules: they are not jobs
// waiting.
func (c *Client) scheduleStatus(ctx context.Context, st *Status) {
	var ss ScheduleStatus
	var err error
	if ss.Schedules, err = c.Schedules(ctx); err == nil {
		ss.Delayed, ss.NDelayed, err = c.Delayed(ctx, statusDelayedShown)
	}
	if err != nil {
		st.Schedules = ScheduleStatus{Error: err.Error()}
		return
	}
	st.Schedules = ss
	n := uint64(len(ss.Schedules) + ss.NDelayed)
	st.Pending -= min(n, st.Pending)
}

// writeSchedules prints the schedules part of the status table.
func (s *ScheduleStatus) writeSchedules(w io.Writer, now time.Time) {
	if s.Error != "" {
		fmt.Fprintf(w, "\nschedules: cannot read them: %s\n", s.Error)
		return
	}
	if len(s.Schedules) == 0 && s.NDelayed == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if len(s.Schedules) > 0 {
		fmt.Fprintf(tw, "\nSCHEDULE\tPATTERN\tSESSION\tCOMMAND\tNEXT\n")
		for _, sc := range s.Schedules {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sc.Name, sc.Pattern, orDash(sc.Session), sc.Command, when(sc.Next, now))
		}
	}
	if s.NDelayed > 0 {
		fmt.Fprintf(tw, "\nDELAYED JOB\tSESSION\tCOMMAND\tDUE\n")
		for _, d := range s.Delayed {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Name, orDash(d.Session), d.Command, when(d.Next, now))
		}
		if more := s.NDelayed - len(s.Delayed); more > 0 {
			fmt.Fprintf(tw, "(%d more)\n", more)
		}
	}
	_ = tw.Flush()
}

// WriteSchedules prints schedules as a table (dispatcher schedule list).
func WriteSchedules(w io.Writer, schedules []queue.ScheduleInfo, now time.Time) error {
	if len(schedules) == 0 {
		_, err := fmt.Fprintln(w, "(no schedules)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "NAME\tPATTERN\tTARGET\tCOMMAND\tNEXT\n")
	for _, sc := range schedules {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sc.Name, sc.Pattern, sc.Target, sc.Command, when(sc.Next, now))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(t, now time.Time) string {
	if t.IsZero() {
		return "?"
	}
	d := t.Sub(now).Round(time.Second)
	if d < 0 {
		return t.UTC().Format(time.RFC3339) + " (due)"
	}
	return t.UTC().Format(time.RFC3339) + " (in " + d.String() + ")"
}
