package deploy_test

import (
	"encoding/json"
	"testing"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// The whole fleet, each part as its deployed user: the dispatcher creates
// the topology, an agent runs jobs, a client submits and reads results. No
// permission is violated on the way.
func TestFleetWorksUnderDeployedPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	qcfg := queue.Config{Partitions: 8}
	s.ensureTopology(t, qcfg)

	ac := s.connect(t, userAgent)
	cfg := agent.Config{Name: "secured-1", Queue: qcfg}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
	a, err := agent.New(ac.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := a.Start(ctx); err != nil {
		t.Fatalf("agent as the agent user: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(testCtx(t)); err != nil {
			t.Errorf("stop: %v", err)
		}
	})

	cc := s.connect(t, userClient)
	client, err := dispatcher.NewClient(ctx, cc.Conn, qcfg)
	if err != nil {
		t.Fatalf("client as the client user: %v", err)
	}
	for _, session := range []string{"secure-session", ""} {
		res, err := client.SubmitAndWait(ctx, session, &queue.Job{Command: "echo", Payload: json.RawMessage(`{"ok":1}`)})
		if err != nil {
			t.Fatalf("session %q: %v", session, err)
		}
		if !res.OK || string(res.Result) != `{"ok":1}` || res.Agent != "secured-1" {
			t.Fatalf("session %q: %+v", session, res)
		}
	}
	ac.assertNoViolations(t)
	cc.assertNoViolations(t)
}
