package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/procfleet/procfleet/cmd/dispatcher/demo"
)

func TestDemoSmall(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, progress bytes.Buffer
	rep, err := demo.Run(ctx, demo.Config{
		Agents: 2, Workers: 1, Sessions: 6, JobsPerSession: 4, Anonymous: 10,
		Out: &out, Progress: &progress,
	})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	if rep.Jobs != 34 || rep.AffinityOK != 6 || rep.Failed != 0 || rep.PerQueue["programs"] != 24 || rep.PerQueue["echo"] != 10 {
		t.Fatalf("report %+v", rep)
	}
	for _, want := range []string{"throughput", "p99", "affinity:    6/6", "programs 24 ok", "echo 10 ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
