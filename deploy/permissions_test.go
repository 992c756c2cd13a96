package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/queue"
)

// These tests start nats-server from deploy/nats-server.conf and drive the
// queue package as each role, proving both halves of least privilege: every
// operation the role's program performs succeeds without a single
// permission violation, and what the role must not do is refused by the
// server.

func submit(t *testing.T, topo *queue.Topology, session string, job *queue.Job) {
	t.Helper()
	ack, err := topo.Submit(testCtx(t), session, job)
	if err != nil {
		t.Fatalf("submit %s: %v", job.ID, err)
	}
	if ack.Stream != topo.Config.JobsStream() || ack.Duplicate {
		t.Fatalf("submit %s: ack %+v, want a new message in %s", job.ID, ack, topo.Config.JobsStream())
	}
}

func fetchOne(t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got jetstream.Msg
	for m := range batch.Messages() {
		got = m
	}
	if err := batch.Error(); err != nil {
		t.Fatal(err)
	}
	if got == nil {
		t.Fatalf("no message from consumer %s within 5s", cons.CachedInfo().Name)
	}
	return got
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	fleettest.Eventually(t, 10*time.Second, func() error {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !ok {
			return errors.New("not yet: " + what)
		}
		return nil
	})
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestAgentPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	dtopo, _ := s.ensureTopology(t, queue.Config{})
	ctopo := s.connect(t, userClient).open(t)
	submit(t, ctopo, "s1", &queue.Job{ID: "job-s1", Command: "echo", Payload: json.RawMessage(`{"n":1}`)})
	submit(t, ctopo, "", &queue.Job{ID: "job-any", Command: "echo"})

	agent := s.connect(t, userAgent)
	// Locked down, the agent only opens what the dispatcher created.
	atopo := agent.open(t)
	if atopo.Config.Partitions != dtopo.Config.Partitions {
		t.Fatalf("agent sees %d partitions, dispatcher created %d", atopo.Config.Partitions, dtopo.Config.Partitions)
	}
	ctx := testCtx(t)

	t.Run("registry", func(t *testing.T) {
		if err := atopo.Heartbeat(ctx, &queue.AgentInfo{Name: "agent-1", Workers: 2}); err != nil {
			t.Fatal(err)
		}
		agents, err := atopo.ListAgents(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(agents) != 1 || agents[0].Name != "agent-1" {
			t.Fatalf("agents = %+v, want agent-1", agents)
		}
	})

	p := atopo.PartitionOf("s1")
	var lease *queue.Lease
	t.Run("leases", func(t *testing.T) {
		var err error
		if lease, err = atopo.AcquireLease(ctx, p, "agent-1"); err != nil {
			t.Fatal(err)
		}
		if err := atopo.RenewLease(ctx, lease); err != nil {
			t.Fatal(err)
		}
		if _, err := atopo.AcquireLease(ctx, p, "agent-2"); !errors.Is(err, queue.ErrLeaseHeld) {
			t.Fatalf("second owner: err = %v, want ErrLeaseHeld", err)
		}
	})

	t.Run("poison guard bucket", func(t *testing.T) {
		kv, err := queue.OpenPoison(ctx, atopo.JS, atopo.Config)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, "FLEET_JOBS.1"); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Fatalf("get: err = %v, want ErrKeyNotFound", err)
		}
		rev, err := kv.Create(ctx, "FLEET_JOBS.1", []byte(`{"deaths":[{"attempt":1}]}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(ctx, "FLEET_JOBS.1", []byte(`{"deaths":[{"attempt":1},{"attempt":2}]}`), rev); err != nil {
			t.Fatal(err)
		}
		if e, err := kv.Get(ctx, "FLEET_JOBS.1"); err != nil || e.Revision() <= rev {
			t.Fatalf("get after update: %v, %v", e, err)
		}
	})

	t.Run("session job: pull, in progress, nak, result, ack", func(t *testing.T) {
		cons, err := atopo.PartitionConsumer(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		msg := fetchOne(t, cons)
		if err := msg.InProgress(); err != nil {
			t.Fatal(err)
		}
		if err := msg.Nak(); err != nil {
			t.Fatal(err)
		}
		msg = fetchOne(t, cons)
		meta, err := msg.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		if meta.NumDelivered != 2 {
			t.Fatalf("delivered %d times, want 2 (the nak was not applied)", meta.NumDelivered)
		}
		job, err := queue.ParseJob(msg.Subject(), msg.Headers(), msg.Data(), meta.Sequence.Stream, atopo.Config)
		if err != nil {
			t.Fatal(err)
		}
		if err := agent.Publish(atopo.Config.ProgressSubject(job.ID), []byte(`{"pct":50}`)); err != nil {
			t.Fatal(err)
		}
		if err := atopo.StoreResult(ctx, &queue.Result{ID: job.ID, OK: true, Session: job.Session, Agent: "agent-1"}); err != nil {
			t.Fatal(err)
		}
		if err := msg.DoubleAck(ctx); err != nil {
			t.Fatalf("ack: %v", err)
		}
	})

	t.Run("anonymous job: pull, dead letter, term", func(t *testing.T) {
		cons, err := atopo.AnyConsumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msg := fetchOne(t, cons)
		meta, err := msg.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		d := &queue.DeadLetter{JobID: "job-any", Subject: msg.Subject(), Job: msg.Data(), Kind: queue.KindExhausted,
			Error: "test", Attempts: 1, Agent: "agent-1", StreamSeq: meta.Sequence.Stream}
		if err := atopo.WriteDeadLetter(ctx, d); err != nil {
			t.Fatal(err)
		}
		if err := msg.Term(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "both jobs are gone from the jobs stream", func() (bool, error) {
			return streamMsgs(t, dtopo.Jobs) == 0, nil
		})
	})

	t.Run("leave", func(t *testing.T) {
		if err := atopo.ReleaseLease(ctx, lease); err != nil {
			t.Fatal(err)
		}
		if err := atopo.RemoveAgent(ctx, "agent-1"); err != nil {
			t.Fatal(err)
		}
	})
	agent.assertNoViolations(t)

	t.Run("cannot submit jobs", func(t *testing.T) {
		agent.denyPublish(t, "fleet.job.s.x")
		agent.denyPublish(t, "fleet.job.any")
		if _, err := atopo.Submit(shortCtx(t), "x", &queue.Job{ID: "forged", Command: "echo"}); err == nil {
			t.Fatal("agent submitted a job")
		}
		agent.expectDenied(t, "fleet.job.s.x")
		if n := streamMsgs(t, dtopo.Jobs); n != 0 {
			t.Fatalf("jobs stream holds %d messages, want 0", n)
		}
	})
	t.Run("cannot change the topology", func(t *testing.T) {
		js := agent.jetstream(t)
		if _, err := js.CreateStream(shortCtx(t), jetstream.StreamConfig{Name: "FLEET_ROGUE", Subjects: []string{"rogue.>"}}); err == nil {
			t.Fatal("agent created a stream")
		}
		agent.expectDenied(t, "$JS.API.STREAM.CREATE.FLEET_ROGUE")
		if _, err := atopo.Jobs.CreateConsumer(shortCtx(t), jetstream.ConsumerConfig{
			Durable: "rogue", FilterSubject: "fleet.job.any", AckPolicy: jetstream.AckExplicitPolicy,
		}); err == nil {
			t.Fatal("agent created a consumer on the jobs stream")
		}
		agent.expectDenied(t, "$JS.API.CONSUMER.CREATE.FLEET_JOBS.rogue")
		agent.denyPublish(t, "$JS.API.STREAM.PURGE.FLEET_JOBS")
		agent.denyPublish(t, "$JS.API.CONSUMER.DELETE.FLEET_JOBS.any")
	})
	t.Run("cannot snoop", func(t *testing.T) {
		agent.denySubscribe(t, "fleet.job.>")
		agent.denySubscribe(t, "fleet.result.>")
	})
}

func TestClientPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	dtopo, dispatcher := s.ensureTopology(t, queue.Config{})
	client := s.connect(t, userClient)
	ctopo := client.open(t)
	ctx := testCtx(t)

	t.Run("submits jobs that are stored", func(t *testing.T) {
		submit(t, ctopo, "s1", &queue.Job{ID: "job-s1", Command: "echo"})
		submit(t, ctopo, "", &queue.Job{ID: "job-any", Command: "echo"})
		if n := streamMsgs(t, dtopo.Jobs); n != 2 {
			t.Fatalf("jobs stream holds %d messages, want 2", n)
		}
	})

	t.Run("reads results, progress and the registry", func(t *testing.T) {
		atopo := s.connect(t, userAgent).open(t)
		if err := atopo.Heartbeat(ctx, &queue.AgentInfo{Name: "agent-1"}); err != nil {
			t.Fatal(err)
		}
		agents, err := ctopo.ListAgents(ctx)
		if err != nil || len(agents) != 1 {
			t.Fatalf("ListAgents = %+v, %v; want agent-1", agents, err)
		}

		progress, err := client.SubscribeSync(ctopo.Config.ProgressSubject("job-s1"))
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Flush(); err != nil {
			t.Fatal(err)
		}
		agentConn := s.connect(t, userAgent)
		if err := agentConn.Publish(ctopo.Config.ProgressSubject("job-s1"), []byte(`{"pct":10}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := progress.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("progress: %v", err)
		}

		waited := make(chan error, 1)
		go func() {
			r, err := ctopo.WaitResult(ctx, client.Conn, "job-s1")
			if err == nil && !r.OK {
				err = errors.New("result not ok")
			}
			waited <- err
		}()
		if err := atopo.StoreResult(ctx, &queue.Result{ID: "job-s1", OK: true}); err != nil {
			t.Fatal(err)
		}
		if err := <-waited; err != nil {
			t.Fatalf("WaitResult: %v", err)
		}
		if r, err := ctopo.GetResult(ctx, "job-s1"); err != nil || !r.OK {
			t.Fatalf("GetResult = %+v, %v", r, err)
		}
	})

	t.Run("calls and discovers the dispatcher's API", func(t *testing.T) {
		svc, err := micro.AddService(dispatcher.Conn, micro.Config{Name: "procfleet", Version: "0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = svc.Stop() })
		err = svc.AddGroup("fleet.api").AddEndpoint("ping", micro.HandlerFunc(func(r micro.Request) {
			_ = r.Respond([]byte("pong"))
		}))
		if err != nil {
			t.Fatal(err)
		}
		// The endpoint's subscription is registered once the server has
		// answered a flush on the dispatcher's connection.
		if err := dispatcher.Flush(); err != nil {
			t.Fatal(err)
		}
		reply, err := client.Request("fleet.api.ping", nil, 5*time.Second)
		if err != nil || string(reply.Data) != "pong" {
			t.Fatalf("fleet.api.ping = %v, %v", reply, err)
		}
		ping, err := micro.ControlSubject(micro.PingVerb, "procfleet", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Request(ping, nil, 5*time.Second); err != nil {
			t.Fatalf("%s: %v", ping, err)
		}
		dispatcher.assertNoViolations(t)
	})
	t.Run("account info, which other clients' JetStream contexts ask first", func(t *testing.T) {
		js, err := jetstream.New(client.Conn)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.AccountInfo(ctx); err != nil {
			t.Fatalf("$JS.API.INFO: %v", err)
		}
	})
	client.assertNoViolations(t)

	t.Run("cannot create a consumer on the jobs stream", func(t *testing.T) {
		if _, err := ctopo.Jobs.CreateConsumer(shortCtx(t), jetstream.ConsumerConfig{
			Durable: "thief", FilterSubject: "fleet.job.any", AckPolicy: jetstream.AckExplicitPolicy,
		}); err == nil {
			t.Fatal("client created a durable consumer on the jobs stream")
		}
		client.expectDenied(t, "$JS.API.CONSUMER.CREATE.FLEET_JOBS.thief")
		if _, err := ctopo.Jobs.CreateConsumer(shortCtx(t), jetstream.ConsumerConfig{
			FilterSubject: "fleet.job.p.>", AckPolicy: jetstream.AckExplicitPolicy,
		}); err == nil {
			t.Fatal("client created an ephemeral consumer on the jobs stream")
		}
		client.expectDenied(t, "$JS.API.CONSUMER.CREATE.FLEET_JOBS.")
		client.denyPublish(t, "$JS.API.CONSUMER.CREATE.FLEET_JOBS")
		client.denyPublish(t, "$JS.API.CONSUMER.DURABLE.CREATE.FLEET_JOBS.thief")
		if _, err := dtopo.Jobs.Consumer(ctx, "thief"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatalf("consumer thief: err = %v, want ErrConsumerNotFound", err)
		}
	})

	t.Run("cannot pull, ack or judge jobs", func(t *testing.T) {
		client.denyPublish(t, "$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS.any")
		client.denyPublish(t, "$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS."+queue.PartitionConsumerName(ctopo.PartitionOf("s1")))
		client.denyPublish(t, "$JS.ACK.FLEET_JOBS.any.1.2.2.0.0")
		client.denyPublish(t, "fleet.result.job-any")
		client.denyPublish(t, "fleet.dlq.job-any")
		client.denyPublish(t, "$KV.fleet_agents.rogue")
		client.denyPublish(t, "$KV.fleet_leases.p-0")
		client.denyPublish(t, "$KV.fleet_poison.FLEET_JOBS.1")
		client.denySubscribe(t, "fleet.job.>")

		anyCons, err := dtopo.AnyConsumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info, err := anyCons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumPending != 1 || info.NumAckPending != 0 || info.Delivered.Consumer != 0 {
			t.Fatalf("consumer any: pending %d, ack pending %d, delivered %d; want the job untouched",
				info.NumPending, info.NumAckPending, info.Delivered.Consumer)
		}
	})
}

func TestDispatcherPermissions(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	_, dispatcher := s.ensureTopology(t, queue.Config{})
	ctx := testCtx(t)

	// Ensure again with other tunables: streams, buckets and all job
	// consumers are updated in place. A short AckWait and one delivery let
	// the server give up on a job below.
	cfg := queue.Config{DedupWindow: time.Minute, AgentTTL: 5 * time.Second, AckWait: time.Second, MaxDeliver: 1}
	dtopo, err := queue.Ensure(ctx, dispatcher.jetstream(t), cfg)
	if err != nil {
		t.Fatalf("Ensure with new tunables: %v", err)
	}

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	if err := dtopo.WatchMaxDeliveries(wctx, dispatcher.Conn, "dispatcher", nil); err != nil {
		t.Fatal(err)
	}

	t.Run("moves a job the server gave up on to the DLQ, then replays it", func(t *testing.T) {
		ctopo := s.connect(t, userClient).open(t)
		submit(t, ctopo, "", &queue.Job{ID: "job-doomed", Command: "echo"})
		atopo := s.connect(t, userAgent).open(t)
		cons, err := atopo.AnyConsumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = fetchOne(t, cons) // never acked: after AckWait the server gives up

		waitFor(t, "the dead letter is written", func() (bool, error) {
			return streamMsgs(t, dtopo.DLQ) == 1, nil
		})
		waitFor(t, "the job is deleted from the jobs stream", func() (bool, error) {
			return streamMsgs(t, dtopo.Jobs) == 0, nil
		})
		r, err := ctopo.GetResult(ctx, "job-doomed")
		if err != nil || r.Error == nil || r.Error.Kind != queue.KindExhausted {
			t.Fatalf("result = %+v, %v; want kind exhausted", r, err)
		}

		dead, err := dtopo.DeadLetters(ctx, 0)
		if err != nil || len(dead) != 1 || dead[0].JobID != "job-doomed" {
			t.Fatalf("DeadLetters = %+v, %v", dead, err)
		}
		if err := dtopo.ReplayDeadLetter(ctx, dead[0].Seq); err != nil {
			t.Fatal(err)
		}
		if n := streamMsgs(t, dtopo.Jobs); n != 1 {
			t.Fatalf("after replay the jobs stream holds %d messages, want 1", n)
		}
		if _, err := dtopo.GetResult(ctx, "job-doomed"); !errors.Is(err, queue.ErrResultNotFound) {
			t.Fatalf("old result after replay: err = %v, want ErrResultNotFound", err)
		}
	})

	t.Run("reads status", func(t *testing.T) {
		atopo := s.connect(t, userAgent).open(t)
		if err := atopo.Heartbeat(ctx, &queue.AgentInfo{Name: "agent-1"}); err != nil {
			t.Fatal(err)
		}
		if _, err := atopo.AcquireLease(ctx, 3, "agent-1"); err != nil {
			t.Fatal(err)
		}
		agents, err := dtopo.ListAgents(ctx)
		if err != nil || len(agents) != 1 {
			t.Fatalf("ListAgents = %+v, %v", agents, err)
		}
		owners, err := dtopo.LeaseOwners(ctx)
		if err != nil || owners[3].Owner != "agent-1" {
			t.Fatalf("LeaseOwners = %+v, %v", owners, err)
		}
		for _, p := range []int{0, dtopo.Config.Partitions - 1} {
			cons, err := dtopo.PartitionConsumer(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := cons.Info(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var names []string
		lister := dtopo.Jobs.ConsumerNames(ctx)
		for n := range lister.Name() {
			names = append(names, n)
		}
		if err := lister.Err(); err != nil {
			t.Fatal(err)
		}
		if len(names) != dtopo.Config.Partitions+1 || !slices.Contains(names, queue.AnyConsumerName) {
			t.Fatalf("%d consumers, want %d including %q", len(names), dtopo.Config.Partitions+1, queue.AnyConsumerName)
		}
		for _, st := range []jetstream.Stream{dtopo.Jobs, dtopo.Results, dtopo.DLQ} {
			if _, err := st.Info(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})
	dispatcher.assertNoViolations(t)

	t.Run("cannot take jobs or write agent state", func(t *testing.T) {
		dispatcher.denyPublish(t, "$JS.API.CONSUMER.MSG.NEXT.FLEET_JOBS.any")
		dispatcher.denyPublish(t, "$JS.ACK.FLEET_JOBS.any.1.2.2.0.0")
		dispatcher.denyPublish(t, "$KV.fleet_leases.p-3")
		dispatcher.denyPublish(t, "$KV.fleet_poison.FLEET_JOBS.1")
		dispatcher.denyPublish(t, "$JS.API.STREAM.DELETE.FLEET_JOBS")
		dispatcher.denyPublish(t, "$JS.API.STREAM.CREATE.OTHER")
		dispatcher.denySubscribe(t, "fleet.job.>")
	})
}

// TestAgentWithoutTopology shows what a locked-down agent does when the
// dispatcher has not created the topology yet: queue.Open reports it
// clearly, and the fallback to Ensure is refused, creating nothing.
func TestAgentWithoutTopology(t *testing.T) {
	t.Parallel()
	s := startSecuredServer(t)
	agent := s.connect(t, userAgent)
	js := agent.jetstream(t)
	if _, err := queue.Open(testCtx(t), js, queue.Config{}); !errors.Is(err, queue.ErrNoTopology) {
		t.Fatalf("Open: err = %v, want ErrNoTopology", err)
	}
	agent.assertNoViolations(t)
	if _, err := queue.Ensure(shortCtx(t), js, queue.Config{}); err == nil {
		t.Fatal("agent created the topology")
	}
	agent.expectDenied(t, "$JS.API.STREAM.CREATE.FLEET_JOBS")

	jsz, err := s.Jsz(&server.JSzOptions{Account: fleetAccount, Streams: true})
	if err != nil {
		t.Fatal(err)
	}
	if jsz.Streams != 0 {
		t.Fatalf("the server holds %d streams, want none", jsz.Streams)
	}
}
