package dispatcher

import (
	"context"
	"net/http"
	"time"

	"github.com/procfleet/procfleet/queue"
)

// AgentsReply is the answer of GET /v1/agents.
type AgentsReply struct {
	Agents []queue.AgentInfo `json:"agents"`
	At     time.Time         `json:"at"`
}

func (a *httpAPI) agents(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	agents, err := a.c.topo.ListAgents(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if agents == nil {
		agents = []queue.AgentInfo{}
	}
	writeJSON(w, AgentsReply{Agents: agents, At: time.Now().UTC()})
}

// QueueInfo is one queue's state in GET /v1/queues.
type QueueInfo struct {
	Name string `json:"name"`
	// Pending are jobs not yet delivered to any agent; AckPending are
	// running (delivered, not yet acked); Redelivered have been delivered
	// more than once.
	Pending     uint64 `json:"pending"`
	AckPending  int    `json:"ack_pending"`
	Redelivered int    `json:"redelivered"`
	// Waiting is every job still in the stream (pending and running; not
	// the delayed jobs and periodic schedules it holds too).
	Waiting uint64 `json:"waiting"`
	// Oldest is when the oldest job still in the stream was enqueued
	// (absent when there is none), OldestAgeMS its age then.
	Oldest      *time.Time `json:"oldest,omitempty"`
	OldestAgeMS int64      `json:"oldest_age_ms"`
	// Agents serving this queue, and the partitions without an owner.
	Agents     int `json:"agents"`
	Unassigned int `json:"unassigned_partitions"`
}

// QueuesReply is the answer of GET /v1/queues.
type QueuesReply struct {
	Queues      []QueueInfo `json:"queues"`
	DeadLetters uint64      `json:"dead_letters"`
	At          time.Time   `json:"at"`
}

// DefaultQueue is the name of the queue of jobs that name none.
const DefaultQueue = "default"

// Queues reports each queue's depth, oldest job and agents (see
// QueueStatuses), "default" first.
func (c *Client) Queues(ctx context.Context) (*QueuesReply, error) {
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	reply := &QueuesReply{Queues: []QueueInfo{}, DeadLetters: st.DeadLetters, At: st.At.UTC()}
	for _, qs := range st.Queues {
		q := QueueInfo{Name: qs.Name, Pending: qs.Pending, AckPending: qs.AckPending, Redelivered: qs.Redelivered,
			Waiting: qs.Waiting, Agents: len(qs.Agents), Unassigned: qs.Unassigned}
		if !qs.OldestWaiting.IsZero() {
			t := qs.OldestWaiting.UTC()
			q.Oldest = &t
			q.OldestAgeMS = max(0, st.At.Sub(t).Milliseconds())
		}
		reply.Queues = append(reply.Queues, q)
	}
	return reply, nil
}

func (a *httpAPI) queues(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
	defer cancel()
	qs, err := a.c.Queues(ctx)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, qs)
}
