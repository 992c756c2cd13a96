package deploy_test

import (
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// deployFiles is every non-Go file under deploy/. Each is checked by a test
// in this package (the README by TestReadmeNamesFiles); a new file must be
// added here, with a check.
var deployFiles = []string{
	"README.md",
	"kubernetes/.gitignore",
	"kubernetes/agent-scaledobject.yaml",
	"kubernetes/agent.yaml",
	"kubernetes/dispatcher.yaml",
	"kubernetes/http-token.env.example",
	"kubernetes/kustomization.yaml",
	"kubernetes/namespace.yaml",
	"kubernetes/nats-server.conf",
	"kubernetes/nats-users.env.example",
	"kubernetes/nats.yaml",
	"kubernetes/queues/agent-programs.yaml",
	"nats-server.conf",
	"systemd/agent.env.example",
	"systemd/dispatcher.env.example",
	"systemd/nats-server.service",
	"systemd/nats.env.example",
	"systemd/procfleet-agent@.service",
	"systemd/procfleet-dispatcher.service",
}

func TestDeployFilesKnown(t *testing.T) {
	t.Parallel()
	var found []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".go") {
			return err
		}
		// A local secrets file (kept out of git) is not part of the tree.
		if path == filepath.Join(kubernetesDir, "nats-users.env") || path == filepath.Join(kubernetesDir, "http-token.env") {
			return nil
		}
		found = append(found, filepath.ToSlash(path))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(found)
	if !slices.Equal(found, deployFiles) {
		t.Fatalf("deploy/ holds\n%v\nwant\n%v\n(add new files to deployFiles and check them)", found, deployFiles)
	}
}

// TestReadmeNamesFiles keeps the README's table honest: every deployable
// file it names exists.
func TestReadmeNamesFiles(t *testing.T) {
	t.Parallel()
	readme := readFile(t, "README.md")
	for _, f := range []string{natsConf, "systemd/nats-server.service", "systemd/procfleet-dispatcher.service",
		"systemd/procfleet-agent@.service", "kubernetes/"} {
		if !strings.Contains(readme, "`"+f+"`") {
			t.Errorf("README.md does not describe `%s`", f)
		}
	}
	for _, f := range []string{"nats.env.example", "dispatcher.env.example", "agent.env.example", "agent-scaledobject.yaml", "kustomization.yaml"} {
		if !strings.Contains(readme, f) {
			t.Errorf("README.md does not mention %s", f)
		}
	}
}
