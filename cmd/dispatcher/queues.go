package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/procfleet/procfleet/internal/cli"
	"github.com/procfleet/procfleet/queue"
)

// cmdQueue declares a queue (its jobs stream, consumers and limits) or lists
// the queues.
func cmdQueue(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "add" && args[0] != "list") {
		fmt.Fprintln(stderr, "Usage: dispatcher queue add NAME [--max-msgs N] [--max-bytes SIZE] [--storage file|memory] [--replicas N]\n       dispatcher queue list [--json]")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			return flag.ErrHelp
		}
		return errors.New("queue: want add or list")
	}
	sub, rest := args[0], args[1:]
	var c common
	fs := newFlags("queue "+sub, "queue add NAME [flags] | queue list [--json]", stderr)
	c.register(fs)
	maxMsgs := fs.Int64("max-msgs", 0, "with add: jobs the queue holds at most; once full, publishes are refused (0 = unlimited)")
	var maxBytes cli.Bytes
	fs.Var(&maxBytes, "max-bytes", "with add: bytes of jobs the queue holds at most, e.g. 1GiB (0 = unlimited)")
	storage := fs.String("storage", "", "with add: file or memory (default: the fleet's); fixed once created")
	replicas := fs.Int("replicas", 0, "with add: replicas of the queue's stream (default: the fleet's)")
	asJSON := fs.Bool("json", false, "with list: print JSON")
	var name string
	if sub == "add" {
		if len(rest) == 0 || rest[0] == "" || rest[0][0] == '-' {
			fs.Usage()
			if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "--help") {
				return flag.ErrHelp
			}
			return errors.New("queue add: NAME is required")
		}
		name, rest = rest[0], rest[1:]
		if err := queue.ValidateQueueName(name); err != nil {
			return fmt.Errorf("queue add: %w", err)
		}
	}
	if err := cli.Parse(fs, rest); err != nil {
		return err
	}
	client, nc, err := connectClient(ctx, &c)
	if err != nil {
		return err
	}
	defer nc.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if sub == "add" {
		limits := queue.QueueLimits{MaxMsgs: *maxMsgs, MaxBytes: int64(maxBytes), Storage: *storage, Replicas: *replicas}
		t, err := client.AddQueue(cctx, name, limits)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "queue %s: stream %s, subjects %s and %s\n", t.Config.QueueName(), t.Config.JobsStream(),
			t.Config.SessionSubject("<session>"), t.Config.AnySubject())
		return nil
	}
	qs, err := client.QueueStatuses(cctx)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(qs)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "QUEUE\tSTREAM\tWAITING\tAGENTS\tWORKERS\tMAX-MSGS\tMAX-BYTES\tSTORAGE\n")
	for _, q := range qs {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", q.Name, q.Stream, q.Waiting, len(q.Agents), q.Workers,
			q.Limits.MaxMsgs, q.Limits.MaxBytes, q.Limits.Storage)
	}
	return tw.Flush()
}
