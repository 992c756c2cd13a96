// Package agent is the library behind cmd/agent: the glue between the NATS
// contract (package queue) and a local worker pool (package pool).
//
// An Agent registers itself in the fleet_agents bucket and heartbeats there.
// From the set of live agents it computes its quota of the session
// partitions (queue.Quotas); over it, it hands its excess over, and under
// it, it takes the orphans queue.Rebalance gives it, each through a lease in
// fleet_leases. For every partition it holds it runs a fetch loop on that
// partition's durable consumer; anonymous jobs come from one shared consumer.
// It watches the registry: a join or a departure rebalances at once, and the
// leases of an agent whose entry expired (it died) are taken without waiting
// for them to expire. It pulls from a partition only while both its lease
// and its own registry entry are known to be alive, so that no partition
// has two consumers when another agent takes it.
// An Agent serves one or more queues (Config.Queue.Queue, or Config.Queues),
// each a lane with its own pool, partitions, leases, consumers and capacity;
// the registry entry, the registry watch, the heartbeat, the micro service
// and the NATS connection are the agent's, and a queue's partitions are
// divided among the live agents whose entries list that queue.
// Each fetched message becomes a pool checkout under its session (reserved in
// message order, so jobs of one session run in FIFO order), a call on the
// leased worker, a stored result, and only then an ack.
//
// Failures map onto JetStream verbs: a checkout error or a worker crash naks
// with a growing delay; an application error is stored and acked; attempts
// that run out store an "exhausted" result and a dead letter before the
// message is terminated. Held messages are kept alive with InProgress.
//
// Cancels (cancel.go): the agent follows the cancels stream into memory
// before it takes any job; a canceled job that has not reached a worker
// never does, a running one's worker is sent a cancel frame (or killed after
// Config.CancelGrace); either ends "canceled", stored once and acked.
//
// Shutdown order (Stop): stop taking partitions and fetching; nak jobs held
// but not started; let running jobs finish and ack; release leases; leave the
// registry; stop the pools. Every queue drains at once. The NATS connection
// belongs to the caller.
package agent
