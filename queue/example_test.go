package queue_test

import (
	"errors"
	"fmt"

	"github.com/procfleet/procfleet/queue"
)

func ExampleConfig_subjects() {
	cfg := queue.Config{}.WithDefaults()
	fmt.Println(cfg.SessionSubject("user-42"))
	fmt.Println(cfg.AnySubject())
	fmt.Println(cfg.PartitionFilter(cfg.PartitionOf("user-42")))
	fmt.Println(cfg.ResultSubject("job-1"))
	fmt.Println(cfg.JobsStream(), cfg.LeasesBucket())
	// Output:
	// fleet.job.s.user-42
	// fleet.job.any
	// fleet.job.p.43.*
	// fleet.result.job-1
	// FLEET_JOBS fleet_leases
}

func ExampleParseJob() {
	cfg := queue.Config{}.WithDefaults()
	job, err := queue.ParseJob("fleet.job.p.3.s1", nil, []byte(`{"id":"j1","command":"predict"}`), 7, cfg)
	fmt.Println(job.ID, job.Session, job.Command, job.MaxAttempts, err)

	_, err = queue.ParseJob("fleet.job.p.3.s1", nil, []byte(`{"id":"j2"}`), 8, cfg)
	var bre *queue.BadRequestError
	fmt.Println(errors.Is(err, queue.ErrBadRequest), errors.As(err, &bre) && bre.JobID == "j2")
	fmt.Println(err)
	// Output:
	// j1 s1 predict 5 <nil>
	// true true
	// queue: bad request (job j2): field "command" is required
}
