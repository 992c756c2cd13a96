package agent

import (
	"testing"
	"time"
)

// TestAdaptiveCapacityRule pins the rule: what the pool starts within
// 25ms, between 2 x pool and max(2 x pool, 32).
func TestAdaptiveCapacityRule(t *testing.T) {
	for _, tc := range []struct {
		pool int
		avg  time.Duration
		want int
	}{
		{4, 0, 8},                       // nothing measured yet
		{4, 200 * time.Microsecond, 32}, // echo: the ceiling
		{4, 5 * time.Millisecond, 24},   // 4 x (1 + 5)
		{4, 13 * time.Millisecond, 8},   // 4 x (1 + 1) = the floor
		{4, 25 * time.Millisecond, 8},
		{4, time.Second, 8},
		{20, time.Millisecond, 40}, // floor above 32: fixed at 2 x pool
		{1, time.Millisecond, 26},
	} {
		floor, ceil := capacityBounds(tc.pool)
		if got := adaptiveCapacity(tc.pool, floor, ceil, tc.avg); got != tc.want {
			t.Errorf("pool %d, avg %v: capacity %d, want %d", tc.pool, tc.avg, got, tc.want)
		}
	}
}
