// Package protocol holds the procfleet worker protocol, version 1: the frame
// codec and the message types exchanged between an agent and a subprocess
// worker over the worker's stdin and stdout.
//
// Every frame is a 4-byte big-endian length N followed by N bytes of UTF-8
// JSON holding one object, with 1 ≤ N ≤ the configured maximum frame size
// (DefaultMaxFrame unless told otherwise). stdout carries frames only; the
// worker's stderr is its log.
//
// A Reader and a Writer each own a reusable buffer, so steady-state framing
// does not allocate per frame beyond what encoding/json needs.
package protocol
