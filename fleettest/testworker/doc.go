// Package testworker is a protocol-v1 worker written in Go, with a switch
// for every way a real worker can fail, for tests of worker, pool, agent and
// anything built on them.
//
// The test binary itself plays the worker, the way os/exec's
// TestHelperProcess does: a test package routes to Main from its TestMain
// when IsHelper reports that the binary was started as a worker, and builds
// the command line with fleettest.HelperWorker:
//
//	func TestMain(m *testing.M) {
//		if testworker.IsHelper() {
//			testworker.Main() // never returns
//		}
//		goleak.VerifyTestMain(m)
//	}
//
// internal/sharedtest.TestMain is that TestMain for procfleet's own packages.
// The same worker is also a program of its own, procfleet-testworker (in
// the directory of that name), which `dispatcher chaos` runs by default so
// that no test code is linked into the dispatcher.
//
// Options choose how the worker starts (crash, never ready, slow, garbage,
// closed stdout) and whether it ignores SIGTERM and shutdown. Once ready,
// the call's command chooses what it does; see Commands.
package testworker
