// Package queue is procfleet's NATS contract: the topology (streams,
// consumers, KV buckets), the job and result envelopes, publishing, results,
// dead letters, the agent registry and partition leases. The dispatcher,
// the agents and any NATS client in another language meet here.
//
// # Subjects and streams (prefix "fleet")
//
//	fleet.job.s.<session>    FLEET_JOBS   publish here; stored as fleet.job.p.<n>.<session>
//	fleet.job.any            FLEET_JOBS   jobs without a session; stored as is
//	fleet.result.<job-id>    FLEET_RESULTS one result per job (dedup by id)
//	fleet.dlq.<job-id>       FLEET_DLQ    the original job and why it died
//	fleet.progress.<job-id>  core NATS    progress reports
//	KV fleet_agents, fleet_leases
//
// # Partitioning
//
// FLEET_JOBS is a work-queue stream whose subject transform rewrites
// "fleet.job.s.*" to "fleet.job.p.{{partition(P,1)}}.{{wildcard(1)}}" as
// messages are stored, so a plain publish from any client is partitioned by
// the server with no dispatcher in the path. The server's partition function
// is fnv-1a (32 bit) of the session token modulo P; Config.PartitionOf
// computes the same. "fleet.job.any" does not match the transform's source
// and is stored unchanged. Each partition n has a durable pull consumer
// "p-<n>" filtered on "fleet.job.p.<n>.*", and "any" takes the anonymous
// jobs; the filters are disjoint, as a work-queue stream requires. P is
// fixed when the stream is created.
//
// # Ownership
//
// Agents heartbeat into fleet_agents (entries expire after AgentTTL) and
// divide the partitions with Rendezvous/Assign over the live agents. An
// agent consumes partition n only while it holds the lease "p-<n>" in
// fleet_leases: AcquireLease creates it, RenewLease updates it at its last
// revision, and the bucket-wide TTL (with limit markers) expires it when the
// agent dies, after which another agent's Create succeeds. Sooner than
// that, an agent that saw the holder's registry entry expire (a watch on
// fleet_agents shows the marker) may TakeLease: a compare-and-set on the
// lease's revision, granted only if the holder last wrote it before it went.
//
// # Results and dead letters
//
// A result is stored with Nats-Msg-Id = job id, so a re-run's duplicate is
// dropped; dead-letter verdicts (exhausted, bad_request) use "<id>-dead" so
// that a job replayed from the DLQ can still store its new result. Jobs the
// server gives up on (MaxDeliver reached without a verdict) are moved to the
// DLQ by WatchMaxDeliveries.
package queue
