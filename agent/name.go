package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/queue"
)

// ErrNameInUse is returned by Start when another live agent heartbeats
// under this agent's name.
var ErrNameInUse = errors.New("is in use by a live agent")

// claimName returns once no other live agent holds this agent's name in
// the registry, or an error wrapping ErrNameInUse when one does. Two agents
// under one name take each other's leases as their own, so their sessions
// would move back and forth between them.
//
// An entry found under the name was written by another process (this one
// has not registered yet): either a dead incarnation of this agent (a
// restart after a crash), whose heartbeats have stopped, or a live twin,
// whose heartbeats go on. So claimName waits for the next word on the key:
// a removal or the server's expiry marker (within AgentTTL of the last
// heartbeat) means dead, a put means live. An entry neither refreshed nor
// expired within twice AgentTTL (its expiry marker was lost) counts as
// dead too. It returns the revision of the last word on the key (0: none),
// for register.
func (a *Agent) claimName(ctx context.Context) (uint64, error) {
	kv := a.lanes[0].topo.Agents
	w, err := kv.Watch(ctx, a.cfg.Name)
	if err != nil {
		return 0, fmt.Errorf("agent: read registry entry %q: %w", a.cfg.Name, err)
	}
	defer func() { _ = w.Stop() }()
	var (
		held     bool   // a put is the key's latest word
		rev      uint64 // the latest word's revision
		caughtUp bool
		expiry   *time.Timer
		expired  <-chan time.Time
	)
	defer func() {
		if expiry != nil {
			expiry.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("agent: waiting for the registry entry %q of an earlier agent to expire: %w", a.cfg.Name, ctx.Err())
		case <-expired:
			return rev, nil // neither refreshed nor removed: its holder is dead
		case e, ok := <-w.Updates():
			if !ok {
				return 0, fmt.Errorf("agent: read registry entry %q: watcher closed", a.cfg.Name)
			}
			switch {
			case e == nil: // the current entry, if any, has been sent
				if !held {
					return rev, nil
				}
				caughtUp = true
				expiry = time.NewTimer(2 * a.cfg.Queue.AgentTTL)
				expired = expiry.C
			case e.Operation() != jetstream.KeyValuePut:
				if caughtUp {
					return e.Revision(), nil // removed (a clean stop) or expired (a crash)
				}
				held, rev = false, e.Revision()
			case !caughtUp:
				held, rev = true, e.Revision()
			default:
				return 0, nameInUse(a.cfg.Name, e.Value())
			}
		}
	}
}

// register writes this agent's first registry entry, over revision last
// of its key (claimName's). If another agent wrote under the name in
// between (two agents started at the same moment under one name), the
// name is claimed again: that agent's next heartbeat makes it an
// ErrNameInUse.
func (a *Agent) register(ctx context.Context, last uint64) error {
	for {
		sent := time.Now()
		err := a.lanes[0].topo.Register(ctx, a.info(), last)
		if err == nil {
			a.beatGotThrough(sent)
			return nil
		}
		if !errors.Is(err, queue.ErrAgentEntryChanged) {
			return fmt.Errorf("agent: register: %w", err)
		}
		if last, err = a.claimName(ctx); err != nil {
			return err
		}
	}
}

// nameInUse is the error for a live agent that refreshed entry value under
// name.
func nameInUse(name string, value []byte) error {
	var in queue.AgentInfo
	if json.Unmarshal(value, &in) != nil {
		return fmt.Errorf("agent: name %q %w (an entry that is no agent's is refreshed under it); give each agent its own --name",
			name, ErrNameInUse)
	}
	return fmt.Errorf("agent: name %q %w (host %s pid %d since %s); give each agent its own --name",
		name, ErrNameInUse, in.Host, in.PID, in.StartedAt.Format(time.RFC3339))
}
