package agent

import (
	"sync/atomic"
	"time"
)

// DefaultCapacityCeiling is the most jobs an agent with the default
// (adaptive) Capacity holds while its jobs are short: max(2 × pool size,
// DefaultCapacityCeiling).
const DefaultCapacityCeiling = 32

// adaptAfter is how many jobs the agent runs before the adaptive capacity
// follows their run time.
const adaptAfter = 8

// capAdapt is the state of the adaptive default capacity. The rule keeps
// "pull only what you can run soon": the agent holds what its pool can
// start within shortPrefetch, pool × (1 + shortPrefetch/avg run time),
// between 2 × pool size (the fixed default before; what jobs of
// shortPrefetch or longer always get) and the ceiling.
type capAdapt struct {
	floor, ceil int          // 0 floor: a fixed Capacity, no adapting
	jobs        atomic.Int64 // jobs observed
	avg         atomic.Int64 // moving average of run time, ns (weight 1/8)
	current     atomic.Int64 // the gate's capacity as last set
}

// capacityBounds returns the floor and ceiling of the adaptive default
// for pool workers.
func capacityBounds(pool int) (floor, ceil int) {
	return 2 * pool, max(2*pool, DefaultCapacityCeiling)
}

// adaptiveCapacity is how many jobs a pool of pool workers starts within
// shortPrefetch when jobs run avg each, within [floor, ceil].
func adaptiveCapacity(pool, floor, ceil int, avg time.Duration) int {
	if avg <= 0 {
		return floor
	}
	n := int64(pool) * (1 + int64(shortPrefetch/avg))
	return int(min(max(n, int64(floor)), int64(ceil)))
}

// observeCapacity folds one job's run time into the adaptive capacity and
// moves the gate when the capacity it gives changes.
func (a *lane) observeCapacity(d time.Duration) {
	c := &a.capAdapt
	if c.floor == 0 {
		return
	}
	n := c.jobs.Add(1)
	old := c.avg.Load()
	if old == 0 {
		c.avg.Store(max(int64(d), 1))
	} else {
		c.avg.Store(max(old+(int64(d)-old)/8, 1))
	}
	if n < adaptAfter {
		return
	}
	want := adaptiveCapacity(a.cfg.Pool.Size, c.floor, c.ceil, time.Duration(c.avg.Load()))
	if int64(want) != c.current.Load() {
		c.current.Store(int64(want))
		a.held.setCap(want)
	}
}

// capacity is the number of jobs the agent holds at most right now.
func (a *lane) capacity() int {
	if a.capAdapt.floor == 0 {
		return a.cfg.Capacity
	}
	return int(a.capAdapt.current.Load())
}

// setCap changes the capacity; growing it serves those waiting in line.
func (g *gate) setCap(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cap = n
	g.grantLocked()
}
