// Package reliability holds procfleet's fault-injection tests: the fleet is
// run under load while its parts fail, and every job accepted is then
// reconciled against the results stream and the workers' execution log.
//
// The tests cover:
//
//   - an agent process SIGKILLed under load: its partitions move to the
//     survivors (the time is measured and logged), every job it held runs
//     again elsewhere, none is lost, and its workers die with it;
//   - worker processes SIGKILLed under load: every affected job is retried
//     and finishes, and sessions are rebound with new_session=true;
//   - nats-server (the embedded one, in its own process, on file storage)
//     stopped and restarted under load: agents and clients reconnect and no
//     accepted job is lost;
//   - a node lost from a three-node JetStream cluster with streams at three
//     replicas: no job is lost;
//   - malformed input on the wire, through the fleet: each case ends in a
//     clear error, nothing is lost, and the agent keeps serving;
//   - the corpus property test (TestCorpus): a seeded random corpus of valid
//     and invalid envelopes and subjects, published by a plain NATS client
//     alongside good traffic, each accepted message ending in exactly one
//     outcome found by the id rule, within the poison bound
//     (PROCFLEET_CORPUS_SEED replays a corpus);
//   - the chaos run (chaos.Run in cmd/dispatcher/chaos, `dispatcher chaos`): random worker
//     and agent kills and restarts, reconciled at the end. It runs for 60s
//     (5s with -short; PROCFLEET_CHAOS_DURATION sets another length).
//
// Agent processes are cmd/agent and the NATS server process is
// `dispatcher serve --embedded`, both built once per test binary. Their
// workers are the test binary itself, acting as the Go test worker
// (package testworker) with an execution log.
//
// The package has no non-test code; this file only documents it.
package reliability
