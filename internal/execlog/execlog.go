// Package execlog is the execution log the Go test worker writes and the
// chaos run and the tests read: one line per call a worker starts,
//
//	<job_id> <attempt> <pid> [<session>]
//
// appended with one O_APPEND write each, so that workers in many processes
// can share one file. Counting lines per job id counts real executions,
// which result attempts cannot (a redelivery that never reached a worker
// raises the attempt too). The writer and the parser live here together so
// that the format has one definition.
package execlog

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Env is the environment variable that names the log file for the test
// worker (testworker.ExecLog sets it).
const Env = "PROCFLEET_TESTWORKER_EXEC_LOG"

// Execution is one line of the log.
type Execution struct {
	JobID   string
	Attempt int
	PID     int
	Session string // "" for an anonymous job
	// Line is the line's position in the log, from 0: the order in which
	// calls started across every worker sharing the file.
	Line int
}

// Open opens path for appending, creating it if needed.
func Open(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// Write appends one execution to w in a single Write call.
func Write(w io.Writer, jobID string, attempt, pid int, session string) error {
	_, err := fmt.Fprintf(w, "%s %d %d %s\n", jobID, attempt, pid, session)
	return err
}

// Read returns every execution in the log at path, per job id, in log
// order. A log that does not exist yet holds no executions (no worker has
// run a call); a malformed line is an error.
func Read(path string) (map[string][]Execution, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string][]Execution{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("execlog: %w", err)
	}
	defer f.Close()
	out := map[string][]Execution{}
	sc := bufio.NewScanner(f)
	for line := 0; sc.Scan(); line++ {
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		e, err := parse(text)
		if err != nil {
			return nil, err
		}
		e.Line = line
		out[e.JobID] = append(out[e.JobID], e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("execlog: %w", err)
	}
	return out, nil
}

func parse(line string) (Execution, error) {
	f := strings.Fields(line)
	if len(f) < 3 || len(f) > 4 {
		return Execution{}, fmt.Errorf("execlog: line %q is malformed", line)
	}
	attempt, err1 := strconv.Atoi(f[1])
	pid, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return Execution{}, fmt.Errorf("execlog: line %q is malformed", line)
	}
	e := Execution{JobID: f[0], Attempt: attempt, PID: pid}
	if len(f) == 4 {
		e.Session = f[3]
	}
	return e, nil
}
