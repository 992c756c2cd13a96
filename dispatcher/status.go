package dispatcher

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// Status is a snapshot of a fleet: who runs, who owns what, what waits.
type Status struct {
	Agents []queue.AgentInfo `json:"agents"`
	// Queues lists every queue: depth, agents serving it, oldest waiting
	// job. Partitions, Anonymous and Pending below are the default
	// queue's.
	Queues      []QueueStatus     `json:"queues"`
	Partitions  []PartitionStatus `json:"partitions"`
	Anonymous   QueueDepth        `json:"anonymous"`
	Pending     uint64            `json:"pending"`      // jobs waiting in FLEET_JOBS
	DeadLetters uint64            `json:"dead_letters"` // messages in FLEET_DLQ
	Results     uint64            `json:"results"`      // messages in FLEET_RESULTS
	Schedules   ScheduleStatus    `json:"schedules"`    // periodic schedules and delayed jobs (schedule.go)
	At          time.Time         `json:"at"`
}

// QueueDepth is one consumer's backlog.
type QueueDepth struct {
	Pending     uint64 `json:"pending"`     // not yet delivered
	AckPending  int    `json:"ack_pending"` // delivered, not yet acked
	Redelivered int    `json:"redelivered"`
}

// PartitionStatus is one session partition.
type PartitionStatus struct {
	Partition int    `json:"partition"`
	Owner     string `json:"owner,omitempty"`
	QueueDepth
}

// Status gathers the fleet's status.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	t := c.topo
	st := &Status{At: time.Now()}
	agents, err := t.ListAgents(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: list agents: %w", err)
	}
	slices.SortFunc(agents, func(a, b queue.AgentInfo) int { return strings.Compare(a.Name, b.Name) })
	st.Agents = agents
	if st.Queues, err = c.QueueStatuses(ctx); err != nil {
		return nil, err
	}
	owners, err := t.LeaseOwners(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: leases: %w", err)
	}
	for p := range t.Config.Partitions {
		ps := PartitionStatus{Partition: p}
		if l, ok := owners[p]; ok {
			ps.Owner = l.Owner
		}
		cons, err := t.PartitionConsumer(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("dispatcher: partition %d: %w", p, err)
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return nil, fmt.Errorf("dispatcher: partition %d: %w", p, err)
		}
		ps.QueueDepth = QueueDepth{Pending: info.NumPending, AckPending: info.NumAckPending, Redelivered: info.NumRedelivered}
		st.Partitions = append(st.Partitions, ps)
	}
	anyCons, err := t.AnyConsumer(ctx)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: anonymous consumer: %w", err)
	}
	if info, err := anyCons.Info(ctx); err == nil {
		st.Anonymous = QueueDepth{Pending: info.NumPending, AckPending: info.NumAckPending, Redelivered: info.NumRedelivered}
	}
	if si, err := t.Jobs.Info(ctx); err == nil {
		st.Pending = si.State.Msgs
	}
	c.scheduleStatus(ctx, st)
	if si, err := t.DLQ.Info(ctx); err == nil {
		st.DeadLetters = si.State.Msgs
	}
	if si, err := t.Results.Info(ctx); err == nil {
		st.Results = si.State.Msgs
	}
	return st, nil
}

// WriteTable prints st for people.
func (st *Status) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "AGENT\tHOST\tPID\tUPTIME\tQUEUE\tBUSY\tIDLE\tSESSIONS\tPARTITIONS\tSTATE\n")
	for _, a := range st.Agents {
		loads := a.Queues
		if len(loads) == 0 {
			l, _ := a.Load(queue.DefaultQueue)
			loads = []queue.QueueLoad{l}
		}
		for i, l := range loads {
			state := "ok"
			if l.Degraded {
				state = "degraded"
			}
			if i == 0 {
				// An entry without a start (not written by an agent) has
				// no uptime.
				uptime := "-"
				if !a.StartedAt.IsZero() {
					uptime = st.At.Sub(a.StartedAt).Round(time.Second).String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t", a.Name, a.Host, a.PID, uptime)
			} else {
				fmt.Fprintf(tw, "\t\t\t\t")
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", l.Queue, l.Busy, l.Idle, l.Sessions, len(l.Partitions), state)
		}
	}
	if len(st.Agents) == 0 {
		fmt.Fprintf(tw, "(no agent is registered)\n")
	}
	fmt.Fprintf(tw, "\nQUEUE\tWAITING\tPENDING\tACK-PENDING\tAGENTS\tWORKERS\tOLDEST WAITING\n")
	for _, q := range st.Queues {
		agents := strings.Join(q.Agents, ",")
		if agents == "" {
			agents = "(none: no agent serves this queue, its jobs wait)"
		}
		oldest := "-"
		if !q.OldestWaiting.IsZero() {
			oldest = q.OldestAge.Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%d\t%s\n", q.Name, q.Waiting, q.Pending, q.AckPending, agents, q.Workers, oldest)
	}
	owners := map[string]int{}
	for _, p := range st.Partitions {
		owner := p.Owner
		if owner == "" {
			owner = "(no owner)"
		}
		owners[owner]++
	}
	names := make([]string, 0, len(owners))
	for o := range owners {
		names = append(names, o)
	}
	slices.Sort(names)
	fmt.Fprintf(tw, "\nPARTITIONS (default queue)\t%d:", len(st.Partitions))
	for _, o := range names {
		fmt.Fprintf(tw, " %s %d", o, owners[o])
	}
	fmt.Fprintf(tw, "\n\nPARTITION\tOWNER\tPENDING\tACK-PENDING\tREDELIVERED\n")
	for _, p := range st.Partitions {
		// Only partitions with a backlog, or without an owner, are news.
		if p.Owner != "" && p.Pending == 0 && p.AckPending == 0 {
			continue
		}
		owner := p.Owner
		if owner == "" {
			owner = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\n", p.Partition, owner, p.Pending, p.AckPending, p.Redelivered)
	}
	fmt.Fprintf(tw, "any\t(all agents)\t%d\t%d\t%d\n", st.Anonymous.Pending, st.Anonymous.AckPending, st.Anonymous.Redelivered)
	fmt.Fprintf(tw, "\njobs waiting: %d   dead letters: %d   results stored: %d\n", st.Pending, st.DeadLetters, st.Results)
	if err := tw.Flush(); err != nil {
		return err
	}
	st.Schedules.writeSchedules(w, st.At)
	return nil
}
