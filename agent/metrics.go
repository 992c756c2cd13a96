package agent

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Job outcomes, the values of the "outcome" label of procfleet_jobs_total.
const (
	outcomeOK          = "ok"
	outcomeAppError    = "app_error"
	outcomeRetried     = "retried"
	outcomeExhausted   = "exhausted"
	outcomeBadRequest  = "bad_request"
	outcomeSessionLost = "session_lost"
	outcomeRequeued    = "requeued" // handed back while draining; not a failure
	outcomePoison      = "poison"   // stopped by the poison guard
	outcomeCanceled    = "canceled" // ended by a cancel (see cancel.go)
)

// metrics are the agent's Prometheus instruments, every one labeled with
// the queue; laneMetrics are one queue's, curried. Job counters and
// histograms are updated as jobs finish; pool and partition figures are read
// when scraped, so they are never stale and cost nothing between scrapes.
type metrics struct {
	jobs         *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	checkoutWait *prometheus.HistogramVec
	redelivered  *prometheus.CounterVec
	deadLetters  *prometheus.CounterVec
	workerDeaths *prometheus.CounterVec
}

type laneMetrics struct {
	// byOutcome holds the series of every known outcome, looked up once:
	// a curried vector's lookup hashes both labels on every job.
	byOutcome    map[string]outcomeSeries
	jobs         *prometheus.CounterVec
	duration     prometheus.ObserverVec
	checkoutWait prometheus.Observer
	redelivered  prometheus.Counter
	deadLetters  *prometheus.CounterVec
	workerDeaths prometheus.Counter
}

// forQueue returns the instruments of queue q, with every label value
// created so that dashboards see zeros, not gaps.
func (m *metrics) forQueue(q string) *laneMetrics {
	l := prometheus.Labels{"queue": q}
	lm := &laneMetrics{
		jobs:         m.jobs.MustCurryWith(l),
		duration:     m.duration.MustCurryWith(l),
		checkoutWait: m.checkoutWait.WithLabelValues(q),
		redelivered:  m.redelivered.WithLabelValues(q),
		deadLetters:  m.deadLetters.MustCurryWith(l),
		workerDeaths: m.workerDeaths.WithLabelValues(q),
	}
	lm.byOutcome = map[string]outcomeSeries{}
	for _, o := range []string{outcomeOK, outcomeAppError, outcomeRetried, outcomeExhausted, outcomeBadRequest, outcomeSessionLost, outcomeRequeued, outcomePoison, outcomeCanceled} {
		lm.byOutcome[o] = outcomeSeries{jobs: lm.jobs.WithLabelValues(o), duration: lm.duration.WithLabelValues(o)}
	}
	return lm
}

type outcomeSeries struct {
	jobs     prometheus.Counter
	duration prometheus.Observer
}

// outcome returns the series of outcome o.
func (m *laneMetrics) outcome(o string) outcomeSeries {
	if s, ok := m.byOutcome[o]; ok {
		return s
	}
	return outcomeSeries{jobs: m.jobs.WithLabelValues(o), duration: m.duration.WithLabelValues(o)}
}

var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}

func newMetrics() *metrics {
	m := &metrics{
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "procfleet", Name: "jobs_total",
			Help: "Jobs handled by this agent, by outcome (ok, app_error, retried, exhausted, bad_request, session_lost, requeued, poison, canceled).",
		}, []string{"outcome", "queue"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "procfleet", Name: "job_duration_seconds",
			Help:    "Time from checkout to verdict of a job that reached a worker, by outcome.",
			Buckets: durationBuckets,
		}, []string{"outcome", "queue"}),
		checkoutWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "procfleet", Name: "checkout_wait_seconds",
			Help:    "Time a job waited for its worker (its session's worker, or any idle one).",
			Buckets: durationBuckets,
		}, []string{"queue"}),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "procfleet", Name: "redeliveries_total",
			Help: "Jobs received with a delivery count above 1.",
		}, []string{"queue"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "procfleet", Name: "dead_letters_total",
			Help: "Jobs this agent wrote to the dead-letter stream, by kind.",
		}, []string{"kind", "queue"}),
		workerDeaths: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "procfleet", Name: "job_worker_deaths_total",
			Help: "Workers lost while running a job (crash, protocol error, killed at the timeout), as recorded by the poison guard.",
		}, []string{"queue"}),
	}
	return m
}

// register adds the agent's metrics, and the pool and partition figures read
// at scrape time, to reg.
func (m *metrics) register(reg prometheus.Registerer, a *Agent) error {
	cs := []prometheus.Collector{m.jobs, m.duration, m.checkoutWait, m.redelivered, m.deadLetters, m.workerDeaths, &poolCollector{a: a}}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// poolCollector reads the pool's stats and the owned partitions' backlog at
// scrape time.
type poolCollector struct{ a *Agent }

var (
	descWorkers    = prometheus.NewDesc("procfleet_workers", "Workers by state.", []string{"state", "queue"}, nil)
	descSessions   = prometheus.NewDesc("procfleet_sessions", "Live sessions bound to workers.", []string{"queue"}, nil)
	descRestarts   = prometheus.NewDesc("procfleet_worker_restarts_total", "Replacement workers started.", []string{"queue"}, nil)
	descRemoved    = prometheus.NewDesc("procfleet_workers_removed_total", "Workers removed after a crash, protocol error, timeout or failed health check.", []string{"queue"}, nil)
	descRecycled   = prometheus.NewDesc("procfleet_workers_recycled_total", "Workers retired by a recycling limit.", []string{"queue"}, nil)
	descDegraded   = prometheus.NewDesc("procfleet_pool_degraded", "1 while the pool is in a crash loop.", []string{"queue"}, nil)
	descWaiters    = prometheus.NewDesc("procfleet_checkout_waiters", "Jobs waiting for a worker.", []string{"queue"}, nil)
	descPartitions = prometheus.NewDesc("procfleet_partitions_owned", "Session partitions this agent holds a lease on.", []string{"queue"}, nil)
	descPending    = prometheus.NewDesc("procfleet_partition_pending_jobs", "Jobs not yet delivered, per owned partition ('any' for anonymous jobs).", []string{"partition", "queue"}, nil)
	descAckPending = prometheus.NewDesc("procfleet_partition_ack_pending_jobs", "Jobs delivered and not yet acked, per owned partition.", []string{"partition", "queue"}, nil)
)

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descWorkers, descSessions, descRestarts, descRemoved, descRecycled, descDegraded, descWaiters, descPartitions, descPending, descAckPending} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.a.lanes {
		collectLane(ch, l)
	}
}

func collectLane(ch chan<- prometheus.Metric, l *lane) {
	q := l.queueName()
	st := l.pool.Stats()
	for state, n := range map[string]int{"starting": st.Starting, "idle": st.Idle, "busy": st.Busy, "stopping": st.Stopping} {
		ch <- prometheus.MustNewConstMetric(descWorkers, prometheus.GaugeValue, float64(n), state, q)
	}
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(st.Sessions), q)
	ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(st.Restarts), q)
	ch <- prometheus.MustNewConstMetric(descRemoved, prometheus.CounterValue, float64(st.Removed), q)
	ch <- prometheus.MustNewConstMetric(descRecycled, prometheus.CounterValue, float64(st.Recycled), q)
	degraded := 0.0
	if st.Degraded {
		degraded = 1
	}
	ch <- prometheus.MustNewConstMetric(descDegraded, prometheus.GaugeValue, degraded, q)
	ch <- prometheus.MustNewConstMetric(descWaiters, prometheus.GaugeValue, float64(st.Waiters), q)

	rs := l.runnerList(true)
	ch <- prometheus.MustNewConstMetric(descPartitions, prometheus.GaugeValue, float64(len(l.Partitions())), q)

	// Backlog per partition costs one request each; bound the scrape.
	ctx, cancel := context.WithTimeout(l.baseCtx, 3*time.Second)
	defer cancel()
	for _, r := range rs {
		info, err := r.cons.Info(ctx)
		if err != nil {
			continue
		}
		label := "any"
		if r.partition >= 0 {
			label = strconv.Itoa(r.partition)
		}
		ch <- prometheus.MustNewConstMetric(descPending, prometheus.GaugeValue, float64(info.NumPending), label, q)
		ch <- prometheus.MustNewConstMetric(descAckPending, prometheus.GaugeValue, float64(info.NumAckPending), label, q)
	}
}
