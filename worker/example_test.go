package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/procfleet/procfleet/fleettest/testworker"
	"github.com/procfleet/procfleet/worker"
)

func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Any protocol-v1 worker will do; this one is the test binary itself.
	argv, env := testworker.Command()
	w, err := worker.Start(ctx, worker.Config{ID: "w-example", Command: argv, Env: env})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer w.Stop(ctx)

	res, err := w.Call(ctx, &worker.Call{Command: "echo", Payload: json.RawMessage(`{"hello":"world"}`)})
	if err != nil {
		// The worker is dead and must be replaced.
		fmt.Println(err)
		return
	}
	fmt.Println(res.OK, string(res.Value))

	res, _ = w.Call(ctx, &worker.Call{Command: "fail"})
	fmt.Println(res.OK, res.Error.Type, res.Error.Message, w.Validate() == nil)

	// Output:
	// true {"hello":"world"}
	// false ValueError boom true
}
