//go:build unix

package embedded

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// LockStore takes an exclusive lock on the JetStream store directory dir
// (creating it if needed), so that a second process started on the same
// directory (two `serve --embedded` with one --data, or a restart while the
// old process still shuts down) stops at once instead of writing the same
// files: two servers on one store lose jobs. unlock releases it; the lock
// also ends with the process.
func LockStore(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: store directory: %w", ErrStart, err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock the store directory: %w", ErrStart, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := "another process"
			if pid := strings.TrimSpace(string(holder)); pid != "" {
				who += " (pid " + pid + ")"
			}
			return nil, fmt.Errorf("%w: %w: %s is held by %s: stop it first, or choose another directory", ErrStart, ErrStoreLocked, dir, who)
		}
		return nil, fmt.Errorf("%w: lock the store directory: %w", ErrStart, err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() {
		_ = f.Truncate(0)
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
