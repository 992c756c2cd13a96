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
// # Queues
//
// The table above is the queue "default". Another queue <q> (Config.Queue)
// has its own work-queue stream FLEET_JOBS_<q> on "fleet.job.<q>.s.*" and
// "fleet.job.<q>.any", stored as "fleet.job.<q>.p.<n>.<session>", its own
// consumers p-<n> and any, and its leases under "<q>.p-<n>"; results, dead
// letters, progress and the registry are shared and name the queue. See
// queues.go for the names that are reserved.
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
// divide the partitions over the live agents by sticky quotas (Quotas,
// Rebalance: a join or a leave moves at most ceil(P/N) partitions). An
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
// Every accepted job message ends in exactly one stored outcome, filed under
// the id OutcomeID gives (body id, else Nats-Msg-Id, else
// "seq-<stream sequence>"; a body id that disagrees with Nats-Msg-Id is a bad
// request filed under the Nats-Msg-Id). A result carries the job's stream
// sequence (JobSeq) and is stored with Nats-Msg-Id "<id>:<queue>:<JobSeq>",
// so a re-run of the same message is dropped while a new job reusing the id
// (after the jobs dedup window, or a job replayed from the DLQ) stores its own;
// GetJobResult and WaitJobResult match a submission's PubAck sequence. An
// outcome over the server's max payload is a *TooLargeError: the agent
// stores TooLargeResult instead, and WriteDeadLetter leaves the body out.
// Jobs the server gives up on (MaxDeliver reached without a verdict) are
// moved to the DLQ by WatchMaxDeliveries.
package queue
