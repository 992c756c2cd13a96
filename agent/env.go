package agent

import (
	"os"
	"strings"
)

// DefaultWorkerEnvAllow is the agent environment a worker sees by default:
// what programs need to run (paths, locale, Python and GPU settings), and
// nothing else, so the agent's credentials (NATS passwords, tokens, cloud
// keys) never leak into user code. A trailing * matches a prefix.
var DefaultWorkerEnvAllow = []string{
	"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TERM",
	"PYTHON*", "VIRTUAL_ENV", "CONDA_*", "LD_LIBRARY_PATH", "CUDA_*", "NVIDIA_*",
	"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
}

// threadVars default to 1 in workers: numeric libraries otherwise start a
// thread per core in every worker, and many workers on one host fight over
// the cores.
var threadVars = []string{"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}

// WorkerEnvironment builds a worker's environment from the agent's own
// (environ, as from os.Environ): the variables allow lets through, then
// extra (KEY=VALUE entries, which win), then the thread variables at 1
// unless already set.
func WorkerEnvironment(environ, allow, extra []string) []string {
	var out []string
	for _, kv := range environ {
		k, _, ok := strings.Cut(kv, "=")
		if ok && allowed(k, allow) {
			out = append(out, kv)
		}
	}
	return withDefaults(out, extra)
}

func withDefaults(env, extra []string) []string {
	out := append([]string(nil), env...)
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		out = removeKey(out, k)
		out = append(out, kv)
	}
	for _, k := range threadVars {
		if !hasKey(out, k) {
			out = append(out, k+"=1")
		}
	}
	return out
}

func allowed(key string, allow []string) bool {
	for _, a := range allow {
		if p, ok := strings.CutSuffix(a, "*"); ok {
			if strings.HasPrefix(key, p) {
				return true
			}
		} else if key == a {
			return true
		}
	}
	return false
}

func hasKey(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

func removeKey(env []string, key string) []string {
	out := env[:0]
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return out
}

// workerEnv applies the config: an explicit Pool.Worker.Env is used as
// given (plus WorkerEnv and the thread defaults); otherwise the agent's
// environment goes through the allowlist.
func (c *Config) workerEnv() []string {
	if c.Pool.Worker.Env != nil {
		return withDefaults(c.Pool.Worker.Env, c.WorkerEnv)
	}
	allow := c.WorkerEnvAllow
	if allow == nil {
		allow = DefaultWorkerEnvAllow
	}
	return WorkerEnvironment(os.Environ(), allow, c.WorkerEnv)
}
