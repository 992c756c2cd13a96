package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

const queueExample = "kubernetes/queues/agent-programs.yaml"

// TestKubernetesQueueExample checks the per-queue example: a Deployment
// whose agents serve the queue (flags that exist, a unique name, a grace
// period over the job timeout) and a ScaledObject on it whose Prometheus
// query reads a series the dispatcher really exports, for the same queue,
// counting the whole backlog (a session job included).
func TestKubernetesQueueExample(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(queueExample)
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]*object{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var node yaml.Node
		if err := dec.Decode(&node); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		o := &object{file: queueExample, node: &node}
		if err := node.Decode(o); err != nil {
			t.Fatal(err)
		}
		objs[o.Kind] = o
	}
	dep, soObj := objs["Deployment"], objs["ScaledObject"]
	if dep == nil || soObj == nil {
		t.Fatalf("%s: want a Deployment and a ScaledObject", queueExample)
	}
	var w workload
	dep.decode(t, &w)
	if len(w.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("want one container")
	}
	c := &w.Spec.Template.Spec.Containers[0]
	where := "Deployment/" + dep.Metadata.Name
	if len(c.Command) == 0 || path.Base(c.Command[0]) != "procfleet-agent" {
		t.Errorf("%s: command %q", where, c.Command)
	}
	values, _, fields := envOf(c)
	checkProgramEnv(t, where, programFlags(t, agentMain), values)
	q := values[cli.EnvName("queue")]
	if err := queue.ValidateQueueName(q); err != nil || q == "" || q == queue.DefaultQueue {
		t.Fatalf("%s: %s = %q, want a queue name (%v)", where, cli.EnvName("queue"), q, err)
	}
	if !strings.HasSuffix(dep.Metadata.Name, "-"+q) {
		t.Errorf("%s: name the Deployment after its queue %q", where, q)
	}
	if fields[cli.EnvName("name")] != "metadata.name" {
		t.Errorf("%s: %s should come from the pod name", where, cli.EnvName("name"))
	}
	if grace := w.Spec.Template.Spec.TerminationGracePeriodSeconds; grace == nil || time.Duration(*grace)*time.Second <= agentStopBound(t, values) {
		t.Errorf("%s: terminationGracePeriodSeconds must exceed the job timeout + 10s", where)
	}

	var so scaledObject
	soObj.decode(t, &so)
	if so.Spec.ScaleTargetRef.Name != dep.Metadata.Name {
		t.Errorf("ScaledObject targets %q, want %q", so.Spec.ScaleTargetRef.Name, dep.Metadata.Name)
	}
	if len(so.Spec.Triggers) != 1 || so.Spec.Triggers[0].Type != "prometheus" {
		t.Fatalf("triggers %+v, want one prometheus trigger", so.Spec.Triggers)
	}
	query := so.Spec.Triggers[0].Metadata["query"]
	m := regexp.MustCompile(`^sum\((procfleet_[a-z_]+)\{queue="([A-Za-z0-9_-]+)"\}\)$`).FindStringSubmatch(query)
	if m == nil || m[2] != q {
		t.Fatalf("query %q, want sum(<metric>{queue=%q})", query, q)
	}

	// What the query reads: the dispatcher's series for the queue, with a
	// session job and an anonymous one waiting.
	nc := fleettest.StartServer(t).Connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := dispatcher.EnsureClient(ctx, nc, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.AddQueue(ctx, q, queue.QueueLimits{}); err != nil {
		t.Fatal(err)
	}
	for _, session := range []string{"s1", ""} {
		if _, _, err := client.SubmitTo(ctx, q, session, &queue.Job{Command: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(client.Metrics())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got float64 = -1
	for _, mf := range mfs {
		if mf.GetName() != m[1] {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "queue" && l.GetValue() == q {
					got = s.GetGauge().GetValue()
				}
			}
		}
	}
	if got != 2 {
		t.Fatalf("%s{queue=%q} = %v, want 2 (a session job and an anonymous one)", m[1], q, got)
	}
}
