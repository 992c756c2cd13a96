package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// AgentInfo is an agent's entry in the agents bucket, refreshed by every
// heartbeat.
type AgentInfo struct {
	Name       string    `json:"name"`
	Host       string    `json:"host,omitempty"`
	PID        int       `json:"pid,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
	Workers    int       `json:"workers"`
	Busy       int       `json:"busy"`
	Idle       int       `json:"idle"`
	Sessions   int       `json:"sessions"`
	Partitions []int     `json:"partitions,omitempty"`
	Degraded   bool      `json:"degraded,omitempty"`
	// Queues lists the queues the agent serves, one pool each; the fields
	// above sum them (Partitions: the default queue's). An entry without
	// Queues (an agent that predates queues) serves the default queue.
	Queues []QueueLoad `json:"queues,omitempty"`
}

// QueueLoad is one queue an agent serves: its pool and its partitions.
type QueueLoad struct {
	Queue      string `json:"queue"`
	Workers    int    `json:"workers"`
	Busy       int    `json:"busy"`
	Idle       int    `json:"idle"`
	Sessions   int    `json:"sessions"`
	Partitions []int  `json:"partitions,omitempty"`
	Degraded   bool   `json:"degraded,omitempty"`
}

// Serves reports whether the agent serves queue ("" is the default queue).
func (a *AgentInfo) Serves(queue string) bool {
	queue = NameOrDefault(queue)
	if len(a.Queues) == 0 {
		return queue == DefaultQueue
	}
	for _, q := range a.Queues {
		if q.Queue == queue {
			return true
		}
	}
	return false
}

// Load returns the agent's entry for queue, if it serves it.
func (a *AgentInfo) Load(queue string) (QueueLoad, bool) {
	queue = NameOrDefault(queue)
	for _, q := range a.Queues {
		if q.Queue == queue {
			return q, true
		}
	}
	if len(a.Queues) == 0 && queue == DefaultQueue {
		return QueueLoad{Queue: DefaultQueue, Workers: a.Workers, Busy: a.Busy, Idle: a.Idle,
			Sessions: a.Sessions, Partitions: a.Partitions, Degraded: a.Degraded}, true
	}
	return QueueLoad{}, false
}

// Heartbeat registers or refreshes agent a (key a.Name). The entry expires
// after AgentTTL without a heartbeat. UpdatedAt is stamped with now.
func (t *Topology) Heartbeat(ctx context.Context, a *AgentInfo) error {
	data, err := agentEntry(a)
	if err != nil {
		return err
	}
	if _, err := t.Agents.Put(ctx, a.Name, data); err != nil {
		return fmt.Errorf("queue: heartbeat %s: %w", a.Name, err)
	}
	return nil
}

// ErrAgentEntryChanged is returned by Register when the entry under the
// agent's name changed since the revision it was given.
var ErrAgentEntryChanged = errors.New("queue: the registry entry under this name changed since it was read")

// Register writes agent a's first entry, as Heartbeat does, but only if
// the latest revision of its key is still last (0: the key has none): an
// agent that has made sure no other live agent holds its name registers so,
// and a twin that registered in between (two agents started at the same
// moment under one name) makes it fail with ErrAgentEntryChanged.
func (t *Topology) Register(ctx context.Context, a *AgentInfo, last uint64) error {
	data, err := agentEntry(a)
	if err != nil {
		return err
	}
	if _, err := t.Agents.Update(ctx, a.Name, data, last); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("queue: register %s: %w", a.Name, ErrAgentEntryChanged)
		}
		return fmt.Errorf("queue: register %s: %w", a.Name, err)
	}
	return nil
}

// agentEntry is a's registry entry, stamped now.
func agentEntry(a *AgentInfo) ([]byte, error) {
	if a == nil || a.Name == "" {
		return nil, errors.New("queue: heartbeat: agent name is required")
	}
	c := *a
	c.UpdatedAt = time.Now().UTC()
	data, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("queue: heartbeat %s: %w", a.Name, err)
	}
	return data, nil
}

// RemoveAgent deletes the agent's entry at once (a clean stop) instead of
// letting it expire. Removing an unknown agent is not an error.
func (t *Topology) RemoveAgent(ctx context.Context, name string) error {
	if err := t.Agents.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("queue: remove agent %s: %w", name, err)
	}
	return nil
}

// ListAgents returns the live agents sorted by name. An entry that is not
// an AgentInfo (no agent wrote it; anyone with the bucket's rights can) is
// listed by its key alone, serving the default queue: that is how the agents
// count it when they divide the partitions, until it expires.
func (t *Topology) ListAgents(ctx context.Context) ([]AgentInfo, error) {
	var out []AgentInfo
	err := latestEntries(ctx, t.Agents, func(e jetstream.KeyValueEntry) error {
		var a AgentInfo
		if err := json.Unmarshal(e.Value(), &a); err != nil {
			a = AgentInfo{Name: e.Key()}
		}
		if a.Name == "" {
			a.Name = e.Key()
		}
		out = append(out, a)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b AgentInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// latestEntries calls fn for the latest live value of every key. A watcher
// sends them all in one stream, where a key listing would cost a round trip
// per key.
func latestEntries(ctx context.Context, kv jetstream.KeyValue, fn func(jetstream.KeyValueEntry) error) error {
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("queue: read bucket %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("queue: read bucket %s: watcher closed", kv.Bucket())
			}
			if e == nil { // every current value has been sent
				return nil
			}
			if err := fn(e); err != nil {
				return err
			}
		case <-ctx.Done():
			return fmt.Errorf("queue: read bucket %s: %w", kv.Bucket(), ctx.Err())
		}
	}
}
