package reliability_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/embedded"
	"github.com/procfleet/procfleet/fleettest"
)

// startCluster starts n embedded JetStream servers in this process,
// clustered by routes on loopback, and returns them with a client URL list
// naming every node.
func startCluster(t *testing.T, n int) ([]*server.Server, string) {
	t.Helper()
	routes := make([]string, n)
	ports := make([]int, n)
	for i := range n {
		ports[i] = freePort(t)
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
	}
	// A node that is down makes the others log a route error every second;
	// the servers' own logs would drown the test's.
	log := zap.NewNop()
	srvs := make([]*server.Server, n)
	urls := make([]string, n)
	for i := range n {
		opts := &server.Options{
			Cluster: server.ClusterOpts{Name: "procfleet", Host: "127.0.0.1", Port: ports[i]},
			Routes:  server.RoutesFromStr(strings.Join(routes, ",")),
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		s, url, err := embedded.Start(ctx, embedded.Config{
			ServerName: fmt.Sprintf("n%d", i+1), StoreDir: t.TempDir(), Options: opts,
			Logger: log.Named(fmt.Sprintf("n%d", i+1)),
		})
		cancel()
		if err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
		srvs[i], urls[i] = s, url
		t.Cleanup(func() {
			s.Shutdown()
			s.WaitForShutdown()
		})
	}
	return srvs, strings.Join(urls, ",")
}

// TestClusterNodeLoss runs the fleet on a three-node JetStream cluster with
// every stream and bucket at three replicas, and shuts down the node that
// leads the jobs stream while jobs run. No job may be lost.
func TestClusterNodeLoss(t *testing.T) {
	t.Parallel()
	srvs, urls := startCluster(t, 3)
	cfg, execLog := fastFleet(t, 2, 2)
	cfg.Agent.Queue.Partitions = 8
	cfg.Agent.Queue.Replicas = 3
	fs := &fleettest.Server{Server: srvs[0], URL: urls}
	// Creating R3 streams needs a meta leader: wait for the cluster.
	nc := fs.Connect(t, nats.MaxReconnects(-1))
	fleettest.Eventually(t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := dispatcher.EnsureClient(ctx, nc, cfg.Agent.Queue)
		return err
	})
	cfg.Server = fs
	f := fleettest.StartFleet(t, cfg)
	f.WaitBalanced(t, 30*time.Second)

	w := workload{prefix: "cl", sessions: 40, perSession: 10, anonymous: 100, command: "sleep", payload: `{"ms":10}`}
	ids := w.submit(t, f.Client)
	poll(t, 60*time.Second, 100*time.Millisecond, func() error {
		if n, err := countResults(f.Topology(), ids); err != nil {
			return err
		} else if n < len(ids)/4 {
			return fmt.Errorf("%d of %d results", n, len(ids))
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	info, err := f.Topology().Jobs.Info(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("jobs stream is not replicated 3 ways: %+v", info.Cluster)
	}
	var victim *server.Server
	for _, s := range srvs {
		if s.Name() == info.Cluster.Leader {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("no node named %q leads the jobs stream", info.Cluster.Leader)
	}
	down := time.Now()
	victim.Shutdown()
	victim.WaitForShutdown()
	t.Logf("shut down %s, leader of %s, under load", victim.Name(), info.Config.Name)

	results := waitResults(t, f.Topology(), ids, 2*time.Minute)
	requireOK(t, results)
	st := summarizeExecs(fleettest.ReadExecLog(t, execLog), ids)
	t.Logf("%d jobs, 0 lost, all done %s after the node went down; %d executions, %d jobs executed more than once",
		len(ids), time.Since(down).Round(time.Millisecond), st.executions, len(st.repeated))
}
