package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/queue"
)

// TestAgentPullsWhileItsRecreateIsRefused: with memory-stored consumers
// (serve --memory-consumers) a server restart loses the job consumers, and
// under the deployed permissions an agent may not make them again: the
// server drops its create request, which only times out. The agent must go
// on pulling meanwhile, so that it resumes as soon as the dispatcher (serve's
// sweep) has made the consumer, not when its own refused request gives up
// (5 s). Here the dispatcher deletes the consumer, as a restart would lose
// it, and makes it again once the agent's attempt was refused.
func TestAgentPullsWhileItsRecreateIsRefused(t *testing.T) {
	t.Parallel()
	s := startSecuredServerWithAdmin(t)
	qcfg := queue.Config{Partitions: 1, MemoryConsumers: true}
	topo, _ := s.ensureTopology(t, qcfg)
	ac := startAgent(t, s, "mem-1", qcfg)
	cc := s.connect(t, userClient)
	ctx := testCtx(t)
	client, err := dispatcher.NewClient(ctx, cc.Conn, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	run := func(id string) time.Duration {
		t.Helper()
		start := time.Now()
		res, err := client.SubmitAndWait(ctx, "s1", &queue.Job{ID: id, Command: "echo", Payload: json.RawMessage(`1`)})
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if !res.OK {
			t.Fatalf("%s: %+v", id, res)
		}
		return time.Since(start)
	}
	run("before") // the agent holds partition 0 and pulls it

	// What a restart of the server does to a memory-stored consumer (no
	// role of the deployment may delete one; the test's own admin user may).
	admin, err := s.connect(t, userAdmin).jetstream(t).Stream(ctx, "FLEET_JOBS")
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteConsumer(ctx, queue.PartitionConsumerName(0)); err != nil {
		t.Fatal(err)
	}
	// The agent's pull finds no consumer; its create is refused.
	timer := time.NewTimer(15 * time.Second)
	defer timer.Stop()
	const create = "$JS.API.CONSUMER.CREATE.FLEET_JOBS.p-0"
	for refused := false; !refused; {
		select {
		case err := <-ac.errs:
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), `"`+create) {
				t.Fatalf("agent: %v, want only refusals of %s", err, create)
			}
			refused = true
		case <-timer.C:
			t.Fatal("the agent never tried to make its lost consumer again")
		}
	}
	if err := topo.RecreateConsumer(ctx, queue.PartitionConsumerName(0)); err != nil {
		t.Fatal(err)
	}
	// The agent's refused request waits 5 s for an answer that never
	// comes; a job must not wait for it (measured: well under 1 s).
	took := run("after")
	if took > 2500*time.Millisecond {
		t.Fatalf("the job took %v after the consumer was back: the agent stopped pulling while its own create was pending", took)
	}
	t.Logf("the job took %v after the consumer was back", took)
	cc.assertNoViolations(t)
}

// userAdmin is a user with every right in the fleet's account, which the
// deployment does not have: the test's stand-in for what a server restart
// does to memory-stored consumers.
const userAdmin = "admin"

// startSecuredServerWithAdmin is startSecuredServer plus userAdmin.
func startSecuredServerWithAdmin(t *testing.T) *securedServer {
	t.Helper()
	passwords := map[string]string{}
	for _, u := range []string{userDispatcher, userAgent, userClient, userAdmin} {
		passwords[u] = "pw" + randomHex(t, 16)
	}
	opts := loadConf(t, natsConf, passwords)
	var acc *server.Account
	for _, a := range opts.Accounts {
		if a.Name == fleetAccount {
			acc = a
		}
	}
	if acc == nil {
		t.Fatalf("%s has no account %s", natsConf, fleetAccount)
	}
	opts.Users = append(opts.Users, &server.User{Username: userAdmin, Password: passwords[userAdmin], Account: acc})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, url, err := embedded.Start(ctx, embedded.Config{
		Host: "127.0.0.1", StoreDir: t.TempDir(), MonitorPort: -1, MaxMemory: 64 << 20, MaxStore: 1 << 30, Options: opts,
		Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)).Named("nats-server"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return &securedServer{Server: srv, URL: url, Options: opts, Passwords: passwords}
}
