// Package deploy holds no code: it is the home of procfleet's deployment
// files (nats-server.conf with per-role permissions, systemd units,
// Kubernetes manifests; see README.md) and of the tests that keep them
// honest. Those tests parse every file, check the fields the programs rely
// on (names, flags, environment variables, stream and consumer names), run
// systemd-analyze on the units where it exists, and start a real
// nats-server from nats-server.conf to prove what each user may and may not
// do.
package deploy
