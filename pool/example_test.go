package pool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/worker"
)

func ExamplePool_Checkout() {
	argv, env := testworker.Command() // any protocol-v1 worker command
	p, err := pool.New(pool.Config{
		Worker: worker.Config{Command: argv, Env: env},
		Size:   2,
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	if err := p.Start(ctx); err != nil { // waits until both workers are ready
		panic(err)
	}
	defer p.Stop(ctx)

	for i := range 2 {
		l, err := p.Checkout(ctx, pool.Request{Session: "s1"})
		var ce *pool.CheckoutError
		if errors.As(err, &ce) {
			fmt.Println("nak the job:", ce.Reason) // the job did not run
			return
		}
		res, err := l.Call(ctx, &worker.Call{Command: "session", Payload: json.RawMessage(fmt.Sprint(i))})
		l.Release() // after a worker error this removes and replaces the worker
		if err != nil {
			fmt.Println("worker failed:", err)
			return
		}
		var r struct {
			NewSession bool `json:"new_session"`
			Count      int  `json:"count"`
		}
		_ = json.Unmarshal(res.Value, &r)
		fmt.Printf("job %d: new_session=%v count=%d\n", i, r.NewSession, r.Count)
	}
	// Output:
	// job 0: new_session=true count=1
	// job 1: new_session=false count=2
}
