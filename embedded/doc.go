// Package embedded runs a nats-server with JetStream inside the current
// process.
//
// It is the single place that knows how to start such a server safely:
// signal handlers are never installed (the server would otherwise call
// os.Exit on SIGINT/SIGTERM and take the host program with it), the
// JetStream store directory is mandatory (the server's fallback is a shared
// temp folder that silently carries state between runs), and Start returns
// only once the server accepts clients.
//
// `dispatcher serve --embedded` and fleettest.StartServer both use it.
package embedded
