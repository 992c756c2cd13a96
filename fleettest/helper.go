package fleettest

import "github.com/procfleet/procfleet/fleettest/testworker"

// HelperWorker returns the argv and environment that make the current test
// binary act as a protocol-v1 worker (see package testworker), configured by
// opts. The test package's TestMain must route to testworker.Main when
// testworker.IsHelper() is true:
//
//	argv, env := fleettest.HelperWorker(testworker.StartDelay(time.Second))
//	w, err := worker.Start(ctx, worker.Config{Command: argv, Env: env})
//
// argv is the test binary with -test.run=^$; env is the current
// environment plus PROCFLEET_TESTWORKER=1 and one variable per option.
func HelperWorker(opts ...testworker.Option) (argv []string, env []string) {
	return testworker.Command(opts...)
}
