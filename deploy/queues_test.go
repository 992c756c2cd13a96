package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/procfleet/procfleet/agent"
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

// gpuLines are the per-queue permission lines nats-server.conf documents
// under "Queues", for queue gpu, by role.
var gpuLines = map[string][]string{
	userDispatcher: {
		`"$JS.API.STREAM.CREATE.FLEET_JOBS_gpu"`, `"$JS.API.STREAM.UPDATE.FLEET_JOBS_gpu"`, `"$JS.API.STREAM.INFO.FLEET_JOBS_gpu"`,
		`"$JS.API.CONSUMER.CREATE.FLEET_JOBS_gpu.>"`, `"$JS.API.CONSUMER.INFO.FLEET_JOBS_gpu.*"`,
		`"$JS.API.CONSUMER.LIST.FLEET_JOBS_gpu"`, `"$JS.API.CONSUMER.NAMES.FLEET_JOBS_gpu"`,
		`"$JS.API.STREAM.MSG.GET.FLEET_JOBS_gpu"`, `"$JS.API.STREAM.MSG.DELETE.FLEET_JOBS_gpu"`,
	},
	userAgent: {
		`"$JS.API.STREAM.INFO.FLEET_JOBS_gpu"`, `"$JS.API.CONSUMER.INFO.FLEET_JOBS_gpu.*"`,
		`"$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS_gpu.*"`, `"$JS.ACK.FLEET_JOBS_gpu.>"`,
	},
	userClient: {`"$JS.API.STREAM.INFO.FLEET_JOBS_gpu"`, `"$JS.API.CONSUMER.INFO.FLEET_JOBS_gpu.*"`},
}

// TestPermissionsLimitToQueues applies the recipe of nats-server.conf's
// "Queues" comment: the dispatcher gets queue gpu's lines, and the agent
// and the client get gpu's lines instead of the default queue's, with
// "fleet.job.gpu.>" for "fleet.job.>". Then the fleet runs gpu jobs under
// them, while the limited client cannot submit to another queue and the
// limited agent cannot pull the default queue's jobs.
func TestPermissionsLimitToQueues(t *testing.T) {
	t.Parallel()
	conf := readFile(t, natsConf)
	for role, lines := range gpuLines {
		for _, l := range lines {
			if !strings.Contains(conf, l) {
				t.Errorf("nats-server.conf's Queues comment lacks the %s line %s", role, l)
			}
		}
	}
	block := func(name string) (start, end int) {
		start = strings.Index(conf, name+": {")
		end = start + strings.Index(conf[start:], "\n}\n")
		if start < 0 || end < start {
			t.Fatalf("no %s block", name)
		}
		return start, end
	}
	edit := func(name string, replace ...string) {
		start, end := block(name)
		b := conf[start:end]
		for i := 0; i+1 < len(replace); i += 2 {
			if !strings.Contains(b, replace[i]) {
				t.Fatalf("%s has no %s", name, replace[i])
			}
			b = strings.Replace(b, replace[i], replace[i+1], 1)
		}
		conf = conf[:start] + b + conf[end:]
	}
	join := func(role string) string { return strings.Join(gpuLines[role], ", ") }
	edit("DISPATCHER_PERMISSIONS", `"$JS.API.INFO",`, `"$JS.API.INFO", `+join(userDispatcher)+",")
	edit("AGENT_PERMISSIONS",
		`"$JS.API.STREAM.INFO.FLEET_JOBS",`, `"$JS.API.STREAM.INFO.FLEET_JOBS_gpu",`,
		`"$JS.API.CONSUMER.INFO.FLEET_JOBS.*", "$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS.*",`, join(userAgent)+",",
		`"$JS.ACK.FLEET_JOBS.>",`, ``)
	edit("CLIENT_PERMISSIONS",
		`"fleet.job.>", "fleet.delay.>", "fleet.cancel.*", "fleet.api.>",`, `"fleet.job.gpu.>", "fleet.cancel.*",`,
		`"$JS.API.CONSUMER.INFO.FLEET_JOBS.*",`, `"$JS.API.CONSUMER.INFO.FLEET_JOBS.*", `+join(userClient)+",")
	path := filepath.Join(t.TempDir(), "nats-server.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startSecuredServerFrom(t, path)
	qcfg := queue.Config{Partitions: 4}
	_, dc := s.ensureTopology(t, qcfg)
	ctx := testCtx(t)
	dclient, err := dispatcher.NewClient(ctx, dc.Conn, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dclient.AddQueue(ctx, "gpu", queue.QueueLimits{}); err != nil {
		t.Fatalf("queue add gpu as the dispatcher: %v", err)
	}

	ac := s.connect(t, userAgent)
	cfg := agent.Config{Name: "gpu-1", Queue: queue.Config{Partitions: 4, Queue: "gpu"}}
	cfg.Pool.Size = 1
	cfg.Pool.Worker.Command, cfg.Pool.Worker.Env = fleettest.HelperWorker()
	a, err := agent.New(ac.Conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(ctx); err != nil {
		t.Fatalf("agent of queue gpu as the limited agent user: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Stop(testCtx(t)); err != nil {
			t.Errorf("stop: %v", err)
		}
	})

	cc := s.connect(t, userClient)
	client, err := dispatcher.NewClient(ctx, cc.Conn, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, session := range []string{"s1", ""} {
		id, seq, err := client.SubmitTo(ctx, "gpu", session, &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)})
		if err != nil {
			t.Fatalf("submit to gpu as the limited client: %v", err)
		}
		r, err := client.ResultOn(ctx, "gpu", id, seq, nil)
		if err != nil || !r.OK || r.Queue != "gpu" || r.Agent != "gpu-1" {
			t.Fatalf("gpu job: %+v, %v", r, err)
		}
	}
	ac.assertNoViolations(t)
	cc.assertNoViolations(t)
	// The limited client cannot submit elsewhere, the limited agent cannot
	// take the default queue's jobs.
	cc.denyPublish(t, "fleet.job.any")
	cc.denyPublish(t, "fleet.job.other.any")
	cc.denyPublish(t, "fleet.api.submit")
	ac.denyPublish(t, "$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS.any")
}

// TestUndeclaredQueueCreationSaysWhy: under the deployed permissions the
// dispatcher user may not create a queue nobody declared (the server drops
// the request, so it only times out): a submit through the dispatcher
// says so, and that the queue is unknown, instead of "NATS is
// unavailable". (A read of such a queue through serve's HTTP API is a
// prompt 404: TestServeUnderDeployedPermissions.)
func TestUndeclaredQueueCreationSaysWhy(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	qcfg := queue.Config{Partitions: 4}
	_, dc := s.ensureTopology(t, qcfg)
	eclient, err := dispatcher.EnsureClient(testCtx(t), dc.Conn, qcfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, _, err = eclient.SubmitTo(ctx, "newq", "", &queue.Job{Command: "echo", Payload: json.RawMessage(`1`)})
	if !errors.Is(err, queue.ErrUnknownQueue) || !strings.Contains(err.Error(), "allowed to create streams") {
		t.Errorf("submit through a dispatcher that may not create the queue: %v, want queue.ErrUnknownQueue saying why", err)
	}
}
