// Package cli holds what both programs' command lines share: flags that
// fall back to PROCFLEET_* environment variables, the zap logger they build,
// and how they connect to NATS.
package cli
