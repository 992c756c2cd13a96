package deploy_test

import (
	"context"
	"testing"
	"time"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// Cancels under the deployed permissions: the client records cancels (the
// Go client, and a plain publish on fleet.cancel.<id>), an agent as the
// agent user follows them and ends the jobs "canceled"; the agent may not
// publish a cancel itself.
func TestCancelUnderDeployedPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	qcfg := queue.Config{Partitions: 8}
	s.ensureTopology(t, qcfg)
	ctx := testCtx(t)

	cc := s.connect(t, userClient)
	client, err := dispatcher.NewClient(ctx, cc.Conn, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	// Before the jobs exist, and before any agent runs.
	if _, err := client.Cancel(ctx, "secure-cancel-1"); err != nil {
		t.Fatalf("cancel as the client user: %v", err)
	}
	if _, err := cc.Request("fleet.cancel.secure-cancel-2", nil, 10*time.Second); err != nil {
		t.Fatalf("plain cancel publish as the client user: %v", err)
	}

	ac := s.connect(t, userAgent)
	cfg := agent.Config{Name: "secured-cancel", Queue: qcfg}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
	a, err := agent.New(ac.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatalf("agent as the agent user: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(testCtx(t)); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	for _, id := range []string{"secure-cancel-1", "secure-cancel-2"} {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := client.SubmitAndWait(wctx, "s", &queue.Job{ID: id, Command: "echo"})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if res.OK || res.Error == nil || res.Error.Kind != queue.KindCanceled {
			t.Fatalf("%s: %+v, want canceled", id, res)
		}
	}
	ac.assertNoViolations(t)
	cc.assertNoViolations(t)
	ac.denyPublish(t, "fleet.cancel.secure-cancel-3")
}
