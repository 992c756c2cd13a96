// Package dispatcher is the front door of a fleet: the Go client that submits
// jobs and waits for their results, the `serve` service (topology, a NATS
// micro service for submit and status, the dead-letter mover) and the status
// report.
//
// It imports queue and nothing that runs jobs: not agent, pool or worker,
// and not nats-server, so that a program that only submits jobs links
// neither (a test in package deploy keeps it so). The local-fleet tools
// (demo, bench, chaos, up) live under cmd/dispatcher, on top of
// internal/localfleet.
//
// Nothing here is needed to submit a job: any NATS client may publish a job
// envelope to <prefix>.job.s.<session> or <prefix>.job.any and read
// <prefix>.result.<id>. The client only makes that convenient and safe
// (deduplicated submission, race-free waiting, clear errors when no agent
// is running).
package dispatcher
