package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/pool"
	"github.com/procfleet/procfleet/queue"
	"github.com/procfleet/procfleet/worker"
)

// fileConfig is the agent's --config file: the queues it serves, one pool
// each (see examples/agent-queues.yaml). Unknown keys are errors.
type fileConfig struct {
	Queues []filePool `yaml:"queues"`
}

// filePool is one queue and its pool; zero fields take the single-pool
// flags' defaults.
type filePool struct {
	Queue          string            `yaml:"queue"`
	WorkerCmd      yaml.Node         `yaml:"worker_cmd"` // a string (split like --worker-cmd) or a list
	WorkerDir      string            `yaml:"worker_dir"`
	PoolSize       *int              `yaml:"pool_size"` // nil: the default size
	Capacity       int               `yaml:"capacity"`
	MaxJobs        int               `yaml:"max_jobs"`
	TTL            string            `yaml:"ttl"`
	IdleTTL        string            `yaml:"idle_ttl"`
	MaxRSS         string            `yaml:"max_rss"`
	SessionIdleTTL string            `yaml:"session_idle_ttl"`
	StartupTimeout string            `yaml:"startup_timeout"`
	Limits         queue.QueueLimits `yaml:"limits"`
}

// loadConfigFile reads path into one agent.QueueConfig per queue. Every
// error names the file and, where it can, the queue and the key.
func loadConfigFile(path string) ([]agent.QueueConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var fc fileConfig
	if err := dec.Decode(&fc); errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("--config %s: the file is empty: want a list under \"queues:\"", path)
	} else if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	if len(fc.Queues) == 0 {
		return nil, fmt.Errorf("--config %s: no queues: want a list under \"queues:\"", path)
	}
	var out []agent.QueueConfig
	var errs []error
	for i, fp := range fc.Queues {
		qc, err := fp.queueConfig()
		if err != nil {
			errs = append(errs, fmt.Errorf("--config %s: queues[%d] (%s): %w", path, i, queue.NameOrDefault(fp.Queue), err))
			continue
		}
		out = append(out, qc)
	}
	return out, errors.Join(errs...)
}

func (fp *filePool) queueConfig() (agent.QueueConfig, error) {
	if err := queue.ValidateQueueName(fp.Queue); err != nil {
		return agent.QueueConfig{}, err
	}
	var argv []string
	switch fp.WorkerCmd.Kind {
	case yaml.ScalarNode:
		words, err := cli.SplitArgs(fp.WorkerCmd.Value)
		if err != nil {
			return agent.QueueConfig{}, fmt.Errorf("worker_cmd: %w", err)
		}
		argv = words
	case yaml.SequenceNode:
		if err := fp.WorkerCmd.Decode(&argv); err != nil {
			return agent.QueueConfig{}, fmt.Errorf("worker_cmd: %w", err)
		}
	case 0:
	default:
		return agent.QueueConfig{}, errors.New("worker_cmd must be a string or a list of strings")
	}
	if len(argv) == 0 {
		return agent.QueueConfig{}, errors.New("worker_cmd is required")
	}
	p := pool.Config{Size: pool.DefaultSize, MaxJobs: fp.MaxJobs, SessionIdleTTL: pool.DefaultSessionIdleTTL}
	w := worker.Config{Command: argv, Dir: fp.WorkerDir, StartupTimeout: worker.DefaultStartupTimeout}
	type duration struct {
		key, s string
		d      *time.Duration
	}
	durations := []duration{
		{"ttl", fp.TTL, &p.TTL},
		{"idle_ttl", fp.IdleTTL, &p.IdleTTL},
		{"session_idle_ttl", fp.SessionIdleTTL, &p.SessionIdleTTL},
		{"startup_timeout", fp.StartupTimeout, &w.StartupTimeout},
	}
	for _, d := range durations {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil || v < 0 {
			return agent.QueueConfig{}, fmt.Errorf("%s: %q is not a duration such as 30s or 10m", d.key, d.s)
		}
		*d.d = v
	}
	if fp.MaxRSS != "" {
		var b cli.Bytes
		if err := b.Set(fp.MaxRSS); err != nil {
			return agent.QueueConfig{}, fmt.Errorf("max_rss: %w", err)
		}
		p.MaxRSS = int64(b)
	}
	if fp.PoolSize != nil {
		// 0 would quietly become the default size.
		if *fp.PoolSize < 1 {
			return agent.QueueConfig{}, fmt.Errorf("pool_size must be at least 1, got %d", *fp.PoolSize)
		}
		p.Size = *fp.PoolSize
	}
	p.Worker = w
	return agent.QueueConfig{Name: fp.Queue, Limits: fp.Limits, Pool: p, Capacity: fp.Capacity}, nil
}
