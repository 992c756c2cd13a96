package deploy_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/procfleet/procfleet/dispatcher"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// Names the manifests must use.
const (
	agentDeployment      = "procfleet-agent"
	dispatcherDeployment = "procfleet-dispatcher"
	natsWorkload         = "nats"
	natsService          = "nats"
)

type kustomization struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Namespace  string `yaml:"namespace"`
	Labels     []struct {
		Pairs map[string]string `yaml:"pairs"`
	} `yaml:"labels"`
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"configMapGenerator"`
	SecretGenerator []struct {
		Name string   `yaml:"name"`
		Envs []string `yaml:"envs"`
	} `yaml:"secretGenerator"`
	Images []struct {
		Name    string `yaml:"name"`
		NewName string `yaml:"newName"`
		NewTag  string `yaml:"newTag"`
	} `yaml:"images"`
}

// object is one Kubernetes document, decoded by kind on demand.
type object struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	file string
	node *yaml.Node
}

func (o *object) decode(t *testing.T, v any) {
	t.Helper()
	if err := o.node.Decode(v); err != nil {
		t.Fatalf("%s: %s/%s: %v", o.file, o.Kind, o.Metadata.Name, err)
	}
}

type workload struct {
	Spec struct {
		Replicas    *int   `yaml:"replicas"`
		ServiceName string `yaml:"serviceName"`
		Selector    struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int64      `yaml:"terminationGracePeriodSeconds"`
	Containers                    []container `yaml:"containers"`
	Volumes                       []struct {
		Name      string `yaml:"name"`
		ConfigMap *struct {
			Name string `yaml:"name"`
		} `yaml:"configMap"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		SecretRef *struct {
			Name string `yaml:"name"`
		} `yaml:"secretRef"`
	} `yaml:"envFrom"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
}

func (c *container) port(name string) int {
	for _, p := range c.Ports {
		if p.Name == name {
			return p.ContainerPort
		}
	}
	return 0
}

func (c *container) mountPath(volume string) string {
	for _, m := range c.VolumeMounts {
		if m.Name == volume {
			return m.MountPath
		}
	}
	return ""
}

type service struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string    `yaml:"name"`
			Port       int       `yaml:"port"`
			TargetPort yaml.Node `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type scaledObject struct {
	Spec struct {
		ScaleTargetRef struct {
			APIVersion string `yaml:"apiVersion"`
			Kind       string `yaml:"kind"`
			Name       string `yaml:"name"`
		} `yaml:"scaleTargetRef"`
		MinReplicaCount *int `yaml:"minReplicaCount"`
		MaxReplicaCount *int `yaml:"maxReplicaCount"`
		Triggers        []struct {
			Type     string            `yaml:"type"`
			Metadata map[string]string `yaml:"metadata"`
		} `yaml:"triggers"`
	} `yaml:"spec"`
}

// manifests is the parsed kustomization with every object it deploys.
type manifests struct {
	kust    kustomization
	objects map[string]*object // by "Kind/name"
}

func (m *manifests) get(t *testing.T, kind, name string) *object {
	t.Helper()
	o, ok := m.objects[kind+"/"+name]
	if !ok {
		t.Fatalf("no %s named %q in %s", kind, name, kubernetesDir)
	}
	return o
}

func (m *manifests) workload(t *testing.T, kind, name string) (*workload, *container) {
	t.Helper()
	var w workload
	m.get(t, kind, name).decode(t, &w)
	if len(w.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("%s/%s: want one container, got %d", kind, name, len(w.Spec.Template.Spec.Containers))
	}
	return &w, &w.Spec.Template.Spec.Containers[0]
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{objects: map[string]*object{}}
	data, err := os.ReadFile(filepath.Join(kubernetesDir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&m.kust); err != nil {
		// KnownFields: a field this test does not model is one it does not
		// check; add it here before relying on it.
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if m.kust.APIVersion != "kustomize.config.k8s.io/v1beta1" || m.kust.Kind != "Kustomization" {
		t.Fatalf("kustomization.yaml: apiVersion %q kind %q", m.kust.APIVersion, m.kust.Kind)
	}
	for _, res := range m.kust.Resources {
		data, err := os.ReadFile(filepath.Join(kubernetesDir, res))
		if err != nil {
			t.Fatalf("kustomization.yaml lists %s: %v", res, err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var node yaml.Node
			if err := dec.Decode(&node); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", res, err)
			}
			o := &object{file: res, node: &node}
			if err := node.Decode(o); err != nil {
				t.Fatalf("%s: %v", res, err)
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Fatalf("%s: a document lacks apiVersion, kind or metadata.name", res)
			}
			key := o.Kind + "/" + o.Metadata.Name
			if _, dup := m.objects[key]; dup {
				t.Fatalf("%s: %s defined twice", res, key)
			}
			m.objects[key] = o
		}
	}
	return m
}

func TestKubernetesKustomization(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	k := m.kust

	// Every manifest in the directory is deployed; nothing listed is
	// missing (loadManifests read them all).
	files, err := filepath.Glob(filepath.Join(kubernetesDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if base := filepath.Base(f); base != "kustomization.yaml" && !slices.Contains(k.Resources, base) {
			t.Errorf("%s is not listed in kustomization.yaml resources", base)
		}
	}

	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			if _, err := os.Stat(filepath.Join(kubernetesDir, f)); err != nil {
				t.Errorf("configMapGenerator %s: %v", g.Name, err)
			}
		}
	}
	// Secrets stay out of git: each env file is created from its example.
	ignored, err := os.ReadFile(filepath.Join(kubernetesDir, ".gitignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range k.SecretGenerator {
		for _, f := range g.Envs {
			if _, err := os.Stat(filepath.Join(kubernetesDir, f+".example")); err != nil {
				t.Errorf("secretGenerator %s: %s has no example: %v", g.Name, f, err)
			}
			if !slices.Contains(strings.Fields(string(ignored)), f) {
				t.Errorf("secretGenerator %s: %s is not in .gitignore", g.Name, f)
			}
		}
	}

	ns := m.get(t, "Namespace", k.Namespace)
	if ns.Metadata.Name == "" {
		t.Fatal("no namespace")
	}
	for key, o := range m.objects {
		if o.Metadata.Namespace != "" && o.Metadata.Namespace != k.Namespace {
			t.Errorf("%s: namespace %q overrides the kustomization's %q", key, o.Metadata.Namespace, k.Namespace)
		}
	}

	// Images the kustomization can retag are the ones the manifests use.
	for _, img := range k.Images {
		used := false
		for _, kind := range []string{"Deployment", "StatefulSet"} {
			for key, o := range m.objects {
				if !strings.HasPrefix(key, kind+"/") {
					continue
				}
				_, c := m.workload(t, kind, o.Metadata.Name)
				used = used || strings.HasPrefix(c.Image, img.Name+":")
			}
		}
		if !used {
			t.Errorf("kustomization images: %s is used by no workload", img.Name)
		}
	}
}

func TestKubernetesWorkloadsAndServices(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	pods := map[string]*workload{}
	for key, o := range m.objects {
		if o.Kind != "Deployment" && o.Kind != "StatefulSet" {
			continue
		}
		w, c := m.workload(t, o.Kind, o.Metadata.Name)
		pods[key] = w
		sel := w.Spec.Selector.MatchLabels
		if len(sel) == 0 {
			t.Errorf("%s: empty selector", key)
		}
		for k, v := range sel {
			if w.Spec.Template.Metadata.Labels[k] != v {
				t.Errorf("%s: selector %s=%s does not match the pod template", key, k, v)
			}
		}
		if c.Image == "" || !strings.Contains(path.Base(c.Image), ":") || strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("%s: image %q must carry a fixed tag", key, c.Image)
		}
		if c.Resources.Requests["cpu"] == "" || c.Resources.Requests["memory"] == "" || c.Resources.Limits["memory"] == "" {
			t.Errorf("%s: set cpu and memory requests and a memory limit", key)
		}
	}
	for key, o := range m.objects {
		if o.Kind != "Service" {
			continue
		}
		var s service
		o.decode(t, &s)
		matched := false
		for wkey, w := range pods {
			if !labelsMatch(s.Spec.Selector, w.Spec.Template.Metadata.Labels) {
				continue
			}
			matched = true
			c := w.Spec.Template.Spec.Containers[0]
			for _, p := range s.Spec.Ports {
				if p.TargetPort.Kind == yaml.ScalarNode && p.TargetPort.Tag == "!!str" && c.port(p.TargetPort.Value) == 0 {
					t.Errorf("%s: targetPort %q is not a port of %s", key, p.TargetPort.Value, wkey)
				}
			}
		}
		if !matched {
			t.Errorf("%s: selector %v matches no workload", key, s.Spec.Selector)
		}
	}
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// envOf returns a container's literal variables, and for secret-backed ones
// the Secret and key.
func envOf(c *container) (values map[string]string, secrets map[string][2]string, fields map[string]string) {
	values, secrets, fields = map[string]string{}, map[string][2]string{}, map[string]string{}
	for _, e := range c.Env {
		values[e.Name] = e.Value
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secrets[e.Name] = [2]string{e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key}
		}
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	return values, secrets, fields
}

// checkNATSClient checks a program's connection settings: NATS_URL points at
// the nats Service, the user is the role's, and the password is that user's
// key in the generated Secret.
func checkNATSClient(t *testing.T, m *manifests, where, user string, c *container) {
	t.Helper()
	values, secrets, _ := envOf(c)
	var svc service
	m.get(t, "Service", natsService).decode(t, &svc)
	u, err := url.Parse(values["NATS_URL"])
	if err != nil || u.Hostname() != natsService {
		t.Errorf("%s: NATS_URL=%q, want nats://%s:<port>", where, values["NATS_URL"], natsService)
	} else {
		ok := false
		for _, p := range svc.Spec.Ports {
			ok = ok || strconv.Itoa(p.Port) == u.Port()
		}
		if !ok {
			t.Errorf("%s: NATS_URL port %s is not a port of Service %s", where, u.Port(), natsService)
		}
	}
	if values["PROCFLEET_USER"] != user {
		t.Errorf("%s: PROCFLEET_USER=%q, want %q", where, values["PROCFLEET_USER"], user)
	}
	if got := values[cli.EnvName("inbox-prefix")]; got != inboxPrefix(user) {
		t.Errorf("%s: %s=%q, want %q, the only inbox nats-server.conf lets %s read", where, cli.EnvName("inbox-prefix"), got, inboxPrefix(user), user)
	}
	ref, ok := secrets["PROCFLEET_PASSWORD"]
	wantKey := "PROCFLEET_" + strings.ToUpper(user) + "_PASSWORD"
	if !ok || ref[1] != wantKey {
		t.Errorf("%s: PROCFLEET_PASSWORD must come from the Secret's key %s, got %v", where, wantKey, ref)
		return
	}
	found := false
	for _, g := range m.kust.SecretGenerator {
		if g.Name != ref[0] {
			continue
		}
		found = true
		for _, f := range g.Envs {
			if _, ok := readEnvFile(t, filepath.Join(kubernetesDir, f+".example"))[ref[1]]; !ok {
				t.Errorf("%s: key %s is not in %s.example", where, ref[1], f)
			}
		}
	}
	if !found {
		t.Errorf("%s: Secret %q is not generated by the kustomization", where, ref[0])
	}
}

func TestKubernetesAgent(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	w, c := m.workload(t, "Deployment", agentDeployment)
	where := "Deployment/" + agentDeployment
	if len(c.Command) == 0 || path.Base(c.Command[0]) != "procfleet-agent" {
		t.Errorf("%s: command %q, want .../procfleet-agent", where, c.Command)
	}
	values, _, fields := envOf(c)
	checkProgramEnv(t, where, programFlags(t, agentMain), values)
	checkNATSClient(t, m, where, userAgent, c)
	if values[cli.EnvName("worker-cmd")] == "" {
		t.Errorf("%s: %s is required", where, cli.EnvName("worker-cmd"))
	}
	// Each pod needs its own agent name; the pod name is unique.
	if fields[cli.EnvName("name")] != "metadata.name" {
		t.Errorf("%s: %s should come from the pod name (fieldRef metadata.name)", where, cli.EnvName("name"))
	}
	grace := w.Spec.Template.Spec.TerminationGracePeriodSeconds
	if bound := agentStopBound(t, values); grace == nil || time.Duration(*grace)*time.Second <= bound {
		t.Errorf("%s: terminationGracePeriodSeconds must exceed job timeout + 10s = %s, or running jobs are killed", where, bound)
	}
}

func TestKubernetesDispatcher(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	_, c := m.workload(t, "Deployment", dispatcherDeployment)
	where := "Deployment/" + dispatcherDeployment
	if len(c.Command) == 0 || path.Base(c.Command[0]) != "procfleet-dispatcher" || len(c.Args) == 0 || c.Args[0] != "serve" {
		t.Errorf("%s: command %q args %q, want .../procfleet-dispatcher serve", where, c.Command, c.Args)
	}
	values, _, _ := envOf(c)
	checkProgramEnv(t, where, programFlags(t, dispatcherMain), values)
	checkNATSClient(t, m, where, userDispatcher, c)
	if _, ok := values[cli.EnvName("embedded")]; ok {
		t.Errorf("%s: %s would start a private server instead of using nats", where, cli.EnvName("embedded"))
	}
	host, port, err := net.SplitHostPort(values[cli.EnvName("http")])
	if err != nil || strconv.Itoa(c.port("http")) != port {
		t.Errorf("%s: %s=%q must listen on the container port named http (%d)", where, cli.EnvName("http"), values[cli.EnvName("http")], c.port("http"))
	}
	// Off loopback the dispatcher refuses to serve HTTP without a token.
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsLoopback()) {
		checkHTTPToken(t, m, where, c)
	}
}

// checkHTTPToken checks that the dispatcher gets an HTTP API token: from a
// generated Secret whose example holds a token the dispatcher accepts, or
// from a token file.
func checkHTTPToken(t *testing.T, m *manifests, where string, c *container) {
	t.Helper()
	values, secrets, _ := envOf(c)
	if values[cli.EnvName("http-token-file")] != "" {
		return
	}
	ref, ok := secrets[cli.EnvName("http-token")]
	if !ok {
		t.Errorf("%s: serves HTTP off loopback without %s or %s: the dispatcher would refuse to start",
			where, cli.EnvName("http-token"), cli.EnvName("http-token-file"))
		return
	}
	for _, g := range m.kust.SecretGenerator {
		if g.Name != ref[0] {
			continue
		}
		for _, f := range g.Envs {
			tok, ok := readEnvFile(t, filepath.Join(kubernetesDir, f+".example"))[ref[1]]
			if !ok {
				t.Errorf("%s: key %s is not in %s.example", where, ref[1], f)
			} else if err := dispatcher.ValidateToken(tok); err != nil {
				t.Errorf("%s: %s.example: %v", where, f, err)
			}
		}
		return
	}
	t.Errorf("%s: Secret %q is not generated by the kustomization", where, ref[0])
}

// natsServerVersion is the nats-server the tests run: go.mod's requirement
// (test binaries carry no dependency build info).
func natsServerVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "github.com/nats-io/nats-server/v2" {
			return strings.TrimPrefix(f[1], "v")
		}
	}
	t.Fatal("go.mod does not require github.com/nats-io/nats-server/v2")
	return ""
}

func TestKubernetesNATS(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	w, c := m.workload(t, "StatefulSet", natsWorkload)
	where := "StatefulSet/" + natsWorkload

	// The server deployed is the one these tests prove the configuration
	// against.
	if want := "nats:" + natsServerVersion(t) + "-alpine"; c.Image != want {
		t.Errorf("%s: image %q, want %q (the nats-server in go.mod)", where, c.Image, want)
	}

	// The configuration file comes from the generated ConfigMap.
	argv := append(slices.Clone(c.Command), c.Args...)
	i := slices.Index(argv, "--config")
	if i < 0 || i+1 >= len(argv) {
		t.Fatalf("%s: no --config in %q", where, argv)
	}
	confPath := argv[i+1]
	if len(m.kust.ConfigMapGenerator) != 1 || !slices.Contains(m.kust.ConfigMapGenerator[0].Files, path.Base(confPath)) {
		t.Fatalf("%s: --config %s is not generated by the kustomization", where, confPath)
	}
	if path.Base(confPath) != path.Base(k8sNATSConf) {
		t.Errorf("%s: --config %s, want .../%s", where, confPath, path.Base(k8sNATSConf))
	}
	cmName := m.kust.ConfigMapGenerator[0].Name
	mounted := false
	for _, v := range w.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == cmName && c.mountPath(v.Name) == path.Dir(confPath) {
			mounted = true
		}
	}
	if !mounted {
		t.Errorf("%s: ConfigMap %s is not mounted at %s", where, cmName, path.Dir(confPath))
	}

	// The passwords come from the generated Secret.
	envFromSecret := false
	for _, ef := range c.EnvFrom {
		for _, g := range m.kust.SecretGenerator {
			envFromSecret = envFromSecret || (ef.SecretRef != nil && ef.SecretRef.Name == g.Name)
		}
	}
	if !envFromSecret {
		t.Errorf("%s: the passwords Secret is not passed to the server (envFrom secretRef)", where)
	}

	// JetStream lives on the claim; ports match the configuration.
	opts := loadConf(t, k8sNATSConf, map[string]string{userDispatcher: "a", userAgent: "b", userClient: "c"})
	if len(w.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("%s: want one volumeClaimTemplate", where)
	}
	dataMount := c.mountPath(w.Spec.VolumeClaimTemplates[0].Metadata.Name)
	if dataMount == "" || !strings.HasPrefix(opts.StoreDir+"/", dataMount+"/") {
		t.Errorf("%s: store_dir %s is not on the claim (mounted at %q)", where, opts.StoreDir, dataMount)
	}
	if c.port("client") != opts.Port || c.port("monitor") != opts.HTTPPort {
		t.Errorf("%s: ports client=%d monitor=%d, configuration listens on %d and %d",
			where, c.port("client"), c.port("monitor"), opts.Port, opts.HTTPPort)
	}
	if w.Spec.ServiceName == "" {
		t.Errorf("%s: no serviceName", where)
	} else {
		m.get(t, "Service", w.Spec.ServiceName)
	}
}

// TestKubernetesScaledObject checks that KEDA scales the agent Deployment on
// the jobs stream, and proves the trigger's account/stream/consumer against
// a server started from the Kubernetes configuration: the monitoring data
// KEDA reads reports a submitted job as pending there.
func TestKubernetesScaledObject(t *testing.T) {
	t.Parallel()
	m := loadManifests(t)
	var so scaledObject
	m.get(t, "ScaledObject", agentDeployment).decode(t, &so)
	ref := so.Spec.ScaleTargetRef
	if ref.Name != agentDeployment || (ref.Kind != "" && ref.Kind != "Deployment") {
		t.Fatalf("scaleTargetRef %+v, want Deployment %s", ref, agentDeployment)
	}
	m.get(t, "Deployment", ref.Name)
	if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount < 1 {
		t.Errorf("minReplicaCount must be at least 1: the trigger does not see session partitions")
	}
	if len(so.Spec.Triggers) == 0 || so.Spec.Triggers[0].Type != "nats-jetstream" {
		t.Fatalf("triggers %+v, want a nats-jetstream trigger", so.Spec.Triggers)
	}
	md := so.Spec.Triggers[0].Metadata
	cfg := queue.Config{}.WithDefaults()
	if md["stream"] != cfg.JobsStream() || md["consumer"] != queue.AnyConsumerName || md["account"] != fleetAccount {
		t.Errorf("trigger watches %s/%s in %s, want %s/%s in %s",
			md["stream"], md["consumer"], md["account"], cfg.JobsStream(), queue.AnyConsumerName, fleetAccount)
	}
	if _, err := strconv.Atoi(md["lagThreshold"]); err != nil {
		t.Errorf("lagThreshold %q: %v", md["lagThreshold"], err)
	}

	opts := loadConf(t, k8sNATSConf, map[string]string{userDispatcher: "a", userAgent: "b", userClient: "c"})
	host, port, err := net.SplitHostPort(md["natsServerMonitoringEndpoint"])
	if want := natsService + "." + m.kust.Namespace + ".svc.cluster.local"; err != nil || host != want || port != strconv.Itoa(opts.HTTPPort) {
		t.Errorf("natsServerMonitoringEndpoint %q, want %s:%d", md["natsServerMonitoringEndpoint"], want, opts.HTTPPort)
	}

	s := startSecuredServerFrom(t, k8sNATSConf)
	s.ensureTopology(t, queue.Config{})
	submit(t, s.connect(t, userClient).open(t), "", &queue.Job{ID: "job-1", Command: "echo"})
	// The consumer's pending count is what KEDA divides by lagThreshold.
	waitFor(t, "monitoring reports the job pending on "+md["stream"]+"/"+md["consumer"]+" in "+md["account"], func() (bool, error) {
		jsz, err := s.Jsz(&server.JSzOptions{Account: md["account"], Streams: true, Consumer: true})
		if err != nil {
			return false, err
		}
		for _, acc := range jsz.AccountDetails {
			for _, st := range acc.Streams {
				for _, ci := range st.Consumer {
					if st.Name == md["stream"] && ci.Name == md["consumer"] {
						return ci.NumPending == 1, nil
					}
				}
			}
		}
		return false, nil
	})
}
