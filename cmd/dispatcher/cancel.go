package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// cmdCancel records a cancel of each job named: `dispatcher cancel <id>...
// [--wait]`. It is idempotent; a job that has finished keeps its result.
func cmdCancel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c common
	fs := newFlags("cancel", "cancel <job-id>... [--wait]", stderr)
	c.register(fs)
	wait := fs.Bool("wait", false, "wait for each job's result and print it")
	waitFor := fs.Duration("wait-timeout", 60*time.Second, "with --wait: give up after this long")
	if err := cli.ParseArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("cancel needs at least one job id")
	}
	for _, id := range fs.Args() {
		if !queue.ValidToken(id) {
			return fmt.Errorf("job id %q must be 1-128 characters of [A-Za-z0-9_-]", id)
		}
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	for _, id := range fs.Args() {
		reply, err := client.Cancel(ctx, id)
		if err != nil {
			return err
		}
		if !*wait {
			if reply.Finished {
				fmt.Fprintf(stdout, "%s: already finished; it keeps its result\n", id)
			} else {
				fmt.Fprintf(stdout, "%s: cancel recorded\n", id)
			}
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, *waitFor)
		res, err := client.Result(wctx, id, func() {
			fmt.Fprintf(stderr, "warning: no agent is registered; job %s ends canceled once an agent takes it\n", id)
		})
		cancel()
		if err != nil {
			return fmt.Errorf("waiting for job %s: %w", id, err)
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return err
		}
	}
	return nil
}
