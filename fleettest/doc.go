// Package fleettest holds public helpers for testing code built on procfleet:
// workers to run (HelperWorker, backed by package testworker), and the
// building blocks for a fleet in one test process. Tests in this repository
// use them the same way users' tests do.
//
// Every helper starts real things (subprocesses over real pipes, an
// embedded nats-server with JetStream) and ties their cleanup to the test.
package fleettest
