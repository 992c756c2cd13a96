package agent

import (
	"fmt"
	"os"

	"github.com/nats-io/nats.go/micro"

	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
)

// ServiceName is the NATS micro service name every agent registers, so that
// `nats micro ls` and `nats micro stats procfleet-agent` show the fleet.
const ServiceName = "procfleet-agent"

// ServiceInfo is what an agent's info endpoint answers and what its
// $SRV.STATS data carries. Pool, Counters, Held, Capacity and Partitions
// are the first queue's (the only one of a single-pool agent); Queues has
// every queue's.
type ServiceInfo struct {
	Agent      queue.AgentInfo `json:"agent"`
	Pool       PoolSummary     `json:"pool"`
	Counters   Counters        `json:"jobs"`
	Held       int             `json:"held"`
	Capacity   int             `json:"capacity"`
	Partitions []int           `json:"partitions"`
	Workers    []WorkerRow     `json:"workers"`
	Queues     []QueueInfo     `json:"queues"`
}

// QueueInfo is one queue's part of ServiceInfo.
type QueueInfo struct {
	Queue      string      `json:"queue"`
	Pool       PoolSummary `json:"pool"`
	Counters   Counters    `json:"jobs"`
	Held       int         `json:"held"`
	Capacity   int         `json:"capacity"`
	Partitions []int       `json:"partitions"`
}

// PoolSummary is the part of pool.Stats worth showing remotely.
type PoolSummary struct {
	Size, Starting, Idle, Busy, Stopping, Sessions, Waiters int
	Restarts, Removed, Recycled, Checkouts, CheckoutErrors  uint64
	Degraded                                                bool
	LastError                                               string `json:",omitempty"`
}

func summarize(st pool.Stats) PoolSummary {
	return PoolSummary{
		Size: st.Size, Starting: st.Starting, Idle: st.Idle, Busy: st.Busy, Stopping: st.Stopping,
		Sessions: st.Sessions, Waiters: st.Waiters, Restarts: st.Restarts, Removed: st.Removed,
		Recycled: st.Recycled, Checkouts: st.Checkouts, CheckoutErrors: st.CheckoutErrors,
		Degraded: st.Degraded, LastError: st.LastError,
	}
}

// Info returns the agent's current state.
func (a *Agent) Info() ServiceInfo {
	si := ServiceInfo{Agent: *a.info()}
	for _, l := range a.lanes {
		st := l.pool.Stats()
		si.Workers = append(si.Workers, l.workerRows(st.Workers)...)
		si.Queues = append(si.Queues, QueueInfo{
			Queue:      l.queueName(),
			Pool:       summarize(st),
			Counters:   l.Counters(),
			Held:       l.held.held(),
			Capacity:   l.capacity(),
			Partitions: l.Partitions(),
		})
	}
	first := si.Queues[0]
	si.Pool, si.Counters, si.Held, si.Capacity, si.Partitions = first.Pool, first.Counters, first.Held, first.Capacity, first.Partitions
	return si
}

// startService registers the agent as a NATS micro service with an "info"
// endpoint on <prefix>.agent.<name>.info and its state in $SRV.STATS.
func (a *Agent) startService() (micro.Service, error) {
	host, _ := os.Hostname()
	queues := ""
	for i, q := range a.Queues() {
		if i > 0 {
			queues += ","
		}
		queues += q
	}
	svc, err := micro.AddService(a.nc, micro.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "procfleet agent: a local pool of subprocess workers fed from JetStream",
		Metadata:    map[string]string{"agent": a.cfg.Name, "host": host, "pid": fmt.Sprint(os.Getpid()), "queues": queues},
		StatsHandler: func(*micro.Endpoint) any {
			return a.Info()
		},
	})
	if err != nil {
		return nil, err
	}
	g := svc.AddGroup(a.cfg.Queue.Prefix + ".agent." + a.cfg.Name)
	if err := g.AddEndpoint("info", micro.HandlerFunc(func(req micro.Request) {
		_ = req.RespondJSON(a.Info())
	})); err != nil {
		_ = svc.Stop()
		return nil, err
	}
	// Make sure the server knows the subscriptions before Start returns, so
	// that an agent that has started is discoverable.
	if err := a.nc.Flush(); err != nil {
		_ = svc.Stop()
		return nil, err
	}
	return svc, nil
}

// Version is reported by the agent's micro service.
const Version = "0.1.0"
