package dispatcher

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics returns a collector of the fleet as the dispatcher sees it, read
// at scrape time: registered agents, jobs waiting per partition, dead
// letters and stored results. Register it with a Prometheus registry.
func (c *Client) Metrics() prometheus.Collector { return &fleetCollector{c: c} }

type fleetCollector struct{ c *Client }

var (
	descAgents      = prometheus.NewDesc("procfleet_agents", "Agents registered in the agents bucket.", nil, nil)
	descDegraded    = prometheus.NewDesc("procfleet_agents_degraded", "Registered agents whose pool is in a crash loop.", nil, nil)
	descQueued      = prometheus.NewDesc("procfleet_jobs_queued", "Jobs in the jobs stream (waiting or running).", nil, nil)
	descPending     = prometheus.NewDesc("procfleet_partition_pending_jobs", "Jobs not yet delivered, per partition ('any' for anonymous jobs).", []string{"partition"}, nil)
	descAckPending  = prometheus.NewDesc("procfleet_partition_ack_pending_jobs", "Jobs delivered and not yet acked, per partition.", []string{"partition"}, nil)
	descRedelivered = prometheus.NewDesc("procfleet_partition_redelivered_jobs", "Jobs currently redelivered at least once, per partition.", []string{"partition"}, nil)
	descOwned       = prometheus.NewDesc("procfleet_partition_owned", "1 if the partition has an owner (a live lease).", []string{"partition"}, nil)
	descDLQ         = prometheus.NewDesc("procfleet_dead_letters", "Messages in the dead-letter stream.", nil, nil)
	descResults     = prometheus.NewDesc("procfleet_results_stored", "Results in the results stream.", nil, nil)

	descQueueWaiting = prometheus.NewDesc("procfleet_queue_jobs", "Jobs in the queue's stream (waiting, held or waiting for a retry; not delayed jobs or periodic schedules), per queue.", []string{"queue"}, nil)
	descQueueBacklog = prometheus.NewDesc("procfleet_queue_backlog_jobs", "Jobs not yet delivered, session partitions and anonymous together, per queue: what to autoscale on.", []string{"queue"}, nil)
	descQueueAcked   = prometheus.NewDesc("procfleet_queue_ack_pending_jobs", "Jobs delivered to an agent and not yet acked, per queue.", []string{"queue"}, nil)
	descQueueAgents  = prometheus.NewDesc("procfleet_queue_agents", "Live agents serving the queue.", []string{"queue"}, nil)
	descQueueWorkers = prometheus.NewDesc("procfleet_queue_workers", "Workers of the live agents serving the queue.", []string{"queue"}, nil)
	descQueueOldest  = prometheus.NewDesc("procfleet_queue_oldest_job_age_seconds", "Age of the oldest job in the queue (0 if empty).", []string{"queue"}, nil)
)

func (f *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAgents, descDegraded, descQueued, descPending, descAckPending, descRedelivered, descOwned, descDLQ, descResults,
		descQueueWaiting, descQueueBacklog, descQueueAcked, descQueueAgents, descQueueWorkers, descQueueOldest} {
		ch <- d
	}
}

func (f *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := f.c.Status(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descAgents, err)
		return
	}
	degraded := 0
	for _, a := range st.Agents {
		if a.Degraded {
			degraded++
		}
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descAgents, float64(len(st.Agents)))
	gauge(descDegraded, float64(degraded))
	gauge(descQueued, float64(st.Pending))
	gauge(descDLQ, float64(st.DeadLetters))
	gauge(descResults, float64(st.Results))
	for _, p := range st.Partitions {
		l := strconv.Itoa(p.Partition)
		gauge(descPending, float64(p.Pending), l)
		gauge(descAckPending, float64(p.AckPending), l)
		gauge(descRedelivered, float64(p.Redelivered), l)
		owned := 0.0
		if p.Owner != "" {
			owned = 1
		}
		gauge(descOwned, owned, l)
	}
	gauge(descPending, float64(st.Anonymous.Pending), "any")
	gauge(descAckPending, float64(st.Anonymous.AckPending), "any")
	gauge(descRedelivered, float64(st.Anonymous.Redelivered), "any")
	for _, q := range st.Queues {
		gauge(descQueueWaiting, float64(q.Waiting), q.Name)
		gauge(descQueueBacklog, float64(q.Pending), q.Name)
		gauge(descQueueAcked, float64(q.AckPending), q.Name)
		gauge(descQueueAgents, float64(len(q.Agents)), q.Name)
		gauge(descQueueWorkers, float64(q.Workers), q.Name)
		gauge(descQueueOldest, q.OldestAge.Seconds(), q.Name)
	}
}
