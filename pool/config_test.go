package pool_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/procfleet/procfleet/pool"
)

// TestNewConfigErrors: a bad Config is refused with an error that wraps
// ErrInvalidConfig and names the field; nothing is started.
func TestNewConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		field string
		edit  func(*pool.Config)
	}{
		{"Worker.Command", func(c *pool.Config) { c.Worker.Command = nil }},
		{"Size", func(c *pool.Config) { c.Size = -1 }},
		{"MaxRSS", func(c *pool.Config) { c.MaxRSS = -1 }},
		{"BackoffMax", func(c *pool.Config) { c.BackoffMin, c.BackoffMax = 2, 1 }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			t.Parallel()
			cfg := config(t)
			tc.edit(&cfg)
			p, err := pool.New(cfg)
			if p != nil || !errors.Is(err, pool.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("New = %v, %v; want ErrInvalidConfig naming %s", p, err, tc.field)
			}
		})
	}
	if _, err := pool.New(config(t)); err != nil {
		t.Fatalf("a valid config: %v", err)
	}
}
