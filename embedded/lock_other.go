//go:build !unix

package embedded

import (
	"fmt"
	"os"
)

// LockStore creates dir; the lock itself needs flock, which this system
// lacks, so a second process on the same directory is not stopped here.
func LockStore(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: store directory: %w", ErrStart, err)
	}
	return func() {}, nil
}
