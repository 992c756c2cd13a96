package execlog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRoundTrip pins the format: what Write appends, Read gives back, in
// log order, with and without a session; a missing log is empty and a
// malformed line is an error.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "exec.log")
	if got, err := Read(path); err != nil || len(got) != 0 {
		t.Fatalf("missing log: %v %v", got, err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []Execution{{"j1", 1, 10, "s1", 0}, {"j2", 1, 11, "", 0}, {"j1", 2, 12, "s1", 0}} {
		if err := Write(f, e.JobID, e.Attempt, e.PID, e.Session); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]Execution{
		"j1": {{"j1", 1, 10, "s1", 0}, {"j1", 2, 12, "s1", 2}},
		"j2": {{"j2", 1, 11, "", 1}},
	}
	for id, w := range want {
		if len(got[id]) != len(w) {
			t.Fatalf("%s: %+v, want %+v", id, got[id], w)
		}
		for i := range w {
			if got[id][i] != w[i] {
				t.Errorf("%s[%d] = %+v, want %+v", id, i, got[id][i], w[i])
			}
		}
	}
	if err := os.WriteFile(path, []byte("j1 one 10 s1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(path); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Fatalf("malformed line: %v", err)
	}
}
