// Command procfleet-testworker is the Go test worker (package testworker) as
// a program of its own. `dispatcher chaos` runs it as its default worker,
// built on demand like the agent, so that no test code is linked into the
// dispatcher. Its options are the PROCFLEET_TESTWORKER_* variables that
// package testworker documents.
package main

import "github.com/procfleet/procfleet/fleettest/testworker"

func main() { testworker.Main() }
