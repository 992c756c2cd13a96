// Package localfleet starts a whole fleet on one machine: an embedded NATS
// server with JetStream in a temporary directory (or a server at a URL),
// the topology, and agents, either in this process (Start, StartAgent) or
// as supervised agent processes (Supervise). WaitBalanced is the one way to
// wait until the agents have divided the partitions between them.
//
// The dispatcher's local-fleet tools (demo, bench, chaos, up under
// cmd/dispatcher) and fleettest.StartFleet are built on it, so that the
// client library in package dispatcher never links the server or the
// agent. The package also finds what those tools run from a checkout: the
// example workers, the agent program and the Go test worker program.
package localfleet
