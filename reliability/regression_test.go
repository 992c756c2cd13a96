package reliability_test

import (
	"context"
	"testing"
	"time"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// TestOpenAdoptsConsumerTunables guards a bug this package found: an agent
// opening a topology made with a shorter AckWait than its own default kept
// the default, so its InProgress interval (a third of AckWait) was longer
// than the server's AckWait and jobs it held were redelivered, and run
// twice, while it still worked on them.
func TestOpenAdoptsConsumerTunables(t *testing.T) {
	t.Parallel()
	js := fleettest.StartServer(t).JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	made := queue.Config{Partitions: 2, AckWait: 3 * time.Second, MaxDeliver: 9, MaxAckPending: 50}
	if _, err := queue.Ensure(ctx, js, made); err != nil {
		t.Fatal(err)
	}
	topo, err := queue.Open(ctx, js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if c := topo.Config; c.AckWait != made.AckWait || c.MaxDeliver != made.MaxDeliver || c.MaxAckPending != made.MaxAckPending {
		t.Fatalf("Open kept AckWait %s MaxDeliver %d MaxAckPending %d, want the server's %s %d %d",
			c.AckWait, c.MaxDeliver, c.MaxAckPending, made.AckWait, made.MaxDeliver, made.MaxAckPending)
	}
}
