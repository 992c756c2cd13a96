// Package worker runs one procfleet subprocess worker: it spawns the process,
// waits for its ready frame, runs calls over the framed protocol on the
// process's stdin and stdout (see package protocol), checks its health and
// stops it.
//
// A Worker is the unit the pool hands out. Its contract is deliberately
// blunt so that the pool never has to guess: a Call that returns a nil error
// leaves the worker usable; any error is an *Error and means the process has
// been killed (its whole process group), so a bad worker can never be
// reused and a stale reply can never reach a later caller.
//
// How the pieces fit:
//   - Start spawns the process in its own process group with a parent-death
//     signal, over three pipes the Worker owns. Three goroutines serve it
//     for its whole life: a stdout reader that decodes frames and hands
//     replies to the one waiting caller, a stderr reader that forwards log
//     lines to the zap logger, and a waiter that reaps the process. Done
//     closes once all three have ended.
//   - Call and Ping write one frame and wait for the reader to hand over the
//     matching reply. No goroutine is started per call. A Call whose Cancel
//     channel closes sends a cancel frame to a worker that announced the
//     "cancel" feature, then waits CancelGrace for the answer before killing
//     it.
//   - The first failure (exit, EOF, broken pipe, protocol violation, call
//     timeout, Stop or Kill) is recorded once, kills the process group and
//     is what every later operation reports.
//
// Workers run on Linux only: the package relies on Pdeathsig, waitid and
// process groups. Elsewhere it builds, and Start fails with ErrUnsupported.
// Pdeathsig fires when the OS thread that started the child exits, so never
// call Start from a goroutine that has called runtime.LockOSThread and may
// end without unlocking.
package worker
