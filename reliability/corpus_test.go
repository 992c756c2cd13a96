package reliability_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/procfleet/procfleet/agent"
	"github.com/procfleet/procfleet/fleettest"
	"github.com/procfleet/procfleet/internal/localfleet"
	"github.com/procfleet/procfleet/queue"
)

// envCorpusSeed replays a corpus: TestCorpus prints the seed it used.
const envCorpusSeed = "PROCFLEET_CORPUS_SEED"

// poisonBound is how many workers one poison job may kill (the agent's
// default guard), whatever its max_attempts says.
const poisonBound = 2

// The corpus size: the fixed cases, then random scenarios (one or two
// messages each), and the good traffic alongside: about 310 messages.
const (
	corpusScenarios  = 160
	goodSessions     = 8
	goodPerSession   = 8
	goodAnonymous    = 48
	corpusDrainLimit = 150 * time.Second // measured: 4-9 s after the last publish
)

// TestCorpus is the property test through the fleet. A seeded random corpus
// of job envelopes, valid and invalid, on valid and invalid subjects (wrong
// types, extreme numbers, deep nesting, odd unicode, oversize values and
// headers, wildcards, colliding, missing and duplicated ids, JetStream
// control headers), is published by a plain nats.go client, interleaved
// with good session and anonymous traffic, to a real fleet:
// `dispatcher serve --embedded` and two cmd/agent processes, one with Go
// test workers, one with the Python example worker (programs_worker.py, on
// the Python SDK, its max frame lowered to 256 KiB). Poison jobs are aimed
// at the agent whose workers they kill. Then:
//
//   - every message the jobs stream accepted has exactly one outcome that a
//     client finds by the documented rule (see corpusMsg.outcomeIDs): one
//     result under the outcome id whose job_seq is the message's stream
//     sequence, plus one dead letter for that sequence, under the same id,
//     exactly when the result is exhausted, bad_request or poison; the
//     verdict is the expected one, and a result is never another job's; a
//     message the stream dropped as a duplicate finds the first one's;
//   - nothing is stored that no accepted message accounts for;
//   - good traffic loses nothing: every good job has its ok result; a good
//     session stays on one worker, in order, and moves (with new_session)
//     only when that worker died;
//   - no poison job kills more than poisonBound workers, per job (from the
//     Go workers' execution log) and per agent (from its pool stats);
//   - the jobs stream drains to empty, and both agents still serve.
//
// The seed is logged; PROCFLEET_CORPUS_SEED=<seed> replays the corpus.
func TestCorpus(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envCorpusSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", envCorpusSeed, s, err)
		}
	}
	replay := fmt.Sprintf("%s=%d go test -race -count=1 -run 'TestCorpus$' -v ./reliability", envCorpusSeed, seed)
	t.Logf("corpus seed %d (replay: %s)", seed, replay)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with corpus seed %d; replay: %s", seed, replay)
		}
	})
	f := startCorpusFleet(t)
	g := newGen(seed, f.owner)
	msgs := g.corpus(corpusScenarios, goodSessions, goodPerSession, goodAnonymous)
	nc, err := nats.Connect(f.url, nats.Name("corpus publisher"), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	publishCorpus(t, js, msgs)
	publishTook := time.Since(start)
	st := summarizePublish(msgs)
	t.Logf("published %d messages in %v: %d accepted (%d good), %d duplicates, %d refused", len(msgs),
		publishTook.Round(time.Millisecond), st.accepted, st.good, st.dups, st.refused)
	for _, r := range st.reasons {
		t.Logf("  refused: %s", r)
	}

	// Wait until every accepted message has its outcome and the jobs
	// stream is empty.
	var snap *corpusSnapshot
	drainStart := time.Now()
	waitErr := pollUntil(corpusDrainLimit, 500*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := readSnapshot(ctx, f.topo)
		if err != nil {
			return err
		}
		snap = s
		missing := 0
		for _, m := range msgs {
			if m.accepted() && len(snap.found(m)) == 0 {
				missing++
			}
		}
		if missing > 0 || snap.jobsLeft > 0 {
			return fmt.Errorf("%d accepted messages without an outcome, %d messages left in the jobs stream", missing, snap.jobsLeft)
		}
		return nil
	})
	drainTook := time.Since(drainStart)
	if waitErr != nil {
		t.Errorf("not drained within %v: %v", corpusDrainLimit, waitErr)
		if snap != nil && len(snap.jobsBySubject) > 0 {
			t.Errorf("left in the jobs stream, by subject: %v", snap.jobsBySubject)
		}
	} else {
		t.Logf("drained %v after the last publish (%v in all)", drainTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	}
	if snap == nil {
		t.FailNow()
	}

	checkOutcomes(t, msgs, snap, true)
	checkGoodTraffic(t, msgs, snap)
	checkPoisonBound(t, f, msgs)

	// The agents are still up and serving.
	for name, p := range f.agents {
		if p.exited() {
			t.Errorf("agent %s exited: %v", name, p.err)
		}
	}
	after := g.goodTraffic("after", 2, 3, 6)
	publishCorpus(t, js, after)
	for _, m := range after {
		if !m.accepted() {
			t.Errorf("%s: not accepted after the corpus: %s", m.describe(), cmp.Or(m.refused, "a duplicate"))
		}
	}
	var afterSnap *corpusSnapshot
	if err := pollUntil(60*time.Second, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := readSnapshot(ctx, f.topo)
		if err != nil {
			return err
		}
		afterSnap = s
		for _, m := range after {
			if m.accepted() && len(s.found(m)) == 0 {
				return fmt.Errorf("job %s has no result yet", m.hdrID)
			}
		}
		return nil
	}); err != nil {
		t.Errorf("the fleet stopped serving after the corpus: %v", err)
	} else {
		checkOutcomes(t, after, afterSnap, false)
	}
}

// corpusFleet is the fleet TestCorpus runs against.
type corpusFleet struct {
	url     string
	topo    *queue.Topology
	execLog string
	agents  map[string]*proc
	nc      *nats.Conn
	owners  map[int]string // partition -> agent, settled
}

// owner returns the agent that runs session's jobs.
func (f *corpusFleet) owner(session string) string {
	return f.owners[f.topo.Config.PartitionOf(session)]
}

const (
	goAgent = "corpus-go"
	pyAgent = "corpus-py"
)

func startCorpusFleet(t *testing.T) *corpusFleet {
	t.Helper()
	f := &corpusFleet{
		url:     "nats://127.0.0.1:" + strconv.Itoa(freePort(t)),
		execLog: filepath.Join(t.TempDir(), "exec.log"),
		agents:  map[string]*proc{},
	}
	startServerProc(t, "nats", f.url, t.TempDir())
	client := connectClient(t, f.url)
	f.topo = client.Topology()
	f.nc = client.Conn()
	parts := f.topo.Config.Partitions
	f.agents[goAgent] = startAgentProc(t, f.url, goAgent, 2, parts, f.execLog)
	f.agents[pyAgent] = startPythonAgentProc(t, f.url, pyAgent, "programs_worker.py", 2, parts,
		"--worker-env", "PROCFLEET_MAX_FRAME="+strconv.Itoa(pyMaxFrame))
	f.owners = waitLeases(t, f.topo, []string{goAgent, pyAgent}, 60*time.Second)
	return f
}

// startPythonAgentProc runs cmd/agent with workers Python workers, the
// example script (under examples/).
func startPythonAgentProc(t *testing.T, url, name, example string, workers, partitions int, extra ...string) *proc {
	t.Helper()
	script, err := localfleet.FindExample(example)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--nats", url, "--name", name,
		"--worker-cmd", "python3 '" + script + "'",
		"--pool-size", strconv.Itoa(workers),
		"--partitions", strconv.Itoa(partitions),
		"--log-level", cmp.Or(os.Getenv("RELIABILITY_AGENT_LOG"), "warn"),
	}
	return startProc(t, name, binary(t, "agent"), nil, append(args, extra...)...)
}

// publishCorpus publishes msgs in order, one at a time, and records what
// the stream answered. A refusal is recorded, not a failure; a publish
// whose fate is unknown (no answer) is a failure.
func publishCorpus(t *testing.T, js jetstream.JetStream, msgs []*corpusMsg) {
	t.Helper()
	var last uint64
	for _, m := range msgs {
		if m.seqSquat {
			m.bodyID = "seq-" + strconv.FormatUint(last+2, 10)
			m.body = object(field{"id", str(m.bodyID)}, field{"command", `"echo"`}, field{"payload", string(m.echo)})
		}
		msg := nats.NewMsg(m.subject)
		if m.hdrID != "" {
			msg.Header.Set(nats.MsgIdHdr, m.hdrID)
		}
		for k, vs := range m.extra {
			msg.Header[k] = append(msg.Header[k], vs...)
		}
		msg.Data = m.body
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ack, err := js.PublishMsg(ctx, msg)
		cancel()
		switch {
		case errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout):
			t.Errorf("%s: no answer to the publish within 30s, so whether it was stored is unknown: %v", m.describe(), err)
			m.refused = "timeout"
		case err != nil:
			m.refused = err.Error()
		case ack.Stream != "FLEET_JOBS":
			t.Errorf("%s: stored in stream %s, not FLEET_JOBS", m.describe(), ack.Stream)
			m.refused = "stored in " + ack.Stream
		default:
			m.seq, m.dup = ack.Sequence, ack.Duplicate
			if !m.dup {
				last = ack.Sequence
			}
		}
	}
}

type publishSummary struct {
	accepted, good, dups, refused int
	reasons                       []string
}

func summarizePublish(msgs []*corpusMsg) publishSummary {
	var st publishSummary
	why := map[string]int{}
	for _, m := range msgs {
		switch {
		case m.accepted():
			st.accepted++
			if m.good {
				st.good++
			}
		case m.dup:
			st.dups++
		default:
			st.refused++
			why[fmt.Sprintf("%s (%s)", m.refused, m.label)]++
		}
	}
	for r, n := range why {
		st.reasons = append(st.reasons, fmt.Sprintf("%d× %s", n, r))
	}
	slices.Sort(st.reasons)
	return st
}

func (m *corpusMsg) describe() string {
	hdr := "no Nats-Msg-Id"
	if m.hdrID != "" {
		hdr = "Nats-Msg-Id " + strconv.Quote(truncLabel(m.hdrID))
	}
	s := fmt.Sprintf("[%s] on %q, %s, body %s", m.label, truncLabel(m.subject), hdr, strconv.Quote(truncLabel(string(m.body))))
	if m.seq != 0 {
		s += fmt.Sprintf(", stream seq %d", m.seq)
	}
	return s
}

// storedResult is one message of the results stream.
type storedResult struct {
	seq    uint64 // in the results stream
	jobSeq uint64 // the job's sequence in the jobs stream, when the result says
	msgID  string
	r      queue.Result
}

// resultEnvelope reads a result with its job_seq, which identifies the job
// message it is the outcome of (0 when the agent does not write it).
type resultEnvelope struct {
	queue.Result
	JobSeq uint64 `json:"job_seq"`
}

// storedDeadLetter is one message of the dead-letter stream.
type storedDeadLetter struct {
	subject string
	d       queue.DeadLetter
}

// corpusSnapshot is what the fleet stored, read back from the streams.
type corpusSnapshot struct {
	results       map[string][]storedResult     // by the id in the result subject
	deadLetters   map[uint64][]storedDeadLetter // by the job's stream sequence
	dlqSubjects   map[string][]uint64           // dead-letter subject token -> job stream seqs
	jobsLeft      uint64                        // messages still in the jobs stream
	jobsBySubject map[string]uint64             // where they are
	undecodable   []string                      // stored messages that are not valid envelopes
	cfg           queue.Config
}

func readSnapshot(ctx context.Context, topo *queue.Topology) (*corpusSnapshot, error) {
	s := &corpusSnapshot{
		results:     map[string][]storedResult{},
		deadLetters: map[uint64][]storedDeadLetter{},
		dlqSubjects: map[string][]uint64{},
		cfg:         topo.Config,
	}
	resultPrefix := topo.Config.ResultSubject("")
	err := readStream(ctx, topo.JS, topo.Results, func(m jetstream.Msg, seq uint64) {
		var r resultEnvelope
		if err := json.Unmarshal(m.Data(), &r); err != nil {
			s.undecodable = append(s.undecodable, fmt.Sprintf("result seq %d on %s: %v", seq, m.Subject(), err))
			return
		}
		id := strings.TrimPrefix(m.Subject(), resultPrefix)
		s.results[id] = append(s.results[id], storedResult{seq: seq, jobSeq: r.JobSeq, msgID: m.Headers().Get(nats.MsgIdHdr), r: r.Result})
	})
	if err != nil {
		return nil, err
	}
	dlqPrefix := topo.Config.DLQSubject("")
	err = readStream(ctx, topo.JS, topo.DLQ, func(m jetstream.Msg, seq uint64) {
		var d queue.DeadLetter
		if err := json.Unmarshal(m.Data(), &d); err != nil {
			s.undecodable = append(s.undecodable, fmt.Sprintf("dead letter seq %d on %s: %v", seq, m.Subject(), err))
			return
		}
		key := strings.TrimPrefix(m.Subject(), dlqPrefix)
		s.deadLetters[d.StreamSeq] = append(s.deadLetters[d.StreamSeq], storedDeadLetter{subject: key, d: d})
		s.dlqSubjects[key] = append(s.dlqSubjects[key], d.StreamSeq)
	})
	if err != nil {
		return nil, err
	}
	info, err := topo.Jobs.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		return nil, err
	}
	s.jobsLeft, s.jobsBySubject = info.State.Msgs, info.State.Subjects
	return s, nil
}

// readStream hands every message of stream, in order, to fn.
func readStream(ctx context.Context, js jetstream.JetStream, stream jetstream.Stream, fn func(jetstream.Msg, uint64)) error {
	info, err := stream.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs == 0 {
		return nil
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, info.Config.Name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return err
		}
		n := 0
		var seq uint64
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return err
			}
			seq = meta.Sequence.Stream
			fn(m, seq)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		if seq >= last {
			return nil
		}
		if n == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fmt.Errorf("stream %s: read up to seq %d of %d", info.Config.Name, seq, last)
		}
	}
}

// mine returns the results under id that are the outcome of m: those whose
// job_seq is m's stream sequence (what a client matches with its PubAck),
// or, from an agent that does not write job_seq, every result under id.
func (s *corpusSnapshot) mine(m *corpusMsg, id string) []storedResult {
	var out []storedResult
	for _, sr := range s.results[id] {
		if sr.jobSeq == 0 || sr.jobSeq == m.seq {
			out = append(out, sr)
		}
	}
	return out
}

// found returns the outcome ids of m under which its result is stored.
func (s *corpusSnapshot) found(m *corpusMsg) []string {
	var out []string
	for _, id := range m.outcomeIDs() {
		if len(s.mine(m, id)) > 0 {
			out = append(out, id)
		}
	}
	return out
}

func describeResult(r *queue.Result) string {
	if r.OK {
		return "ok " + truncLabel(string(r.Result))
	}
	if r.Error == nil {
		return "failed without an error"
	}
	return fmt.Sprintf("%s: %s", r.Error.Kind, truncLabel(r.Error.Message))
}

// checkOutcomes checks every accepted message's outcome and, if all is
// set (msgs are all that was published), that nothing else was stored.
func checkOutcomes(t *testing.T, msgs []*corpusMsg, s *corpusSnapshot, all bool) {
	t.Helper()
	// How many accepted messages may end under each id.
	claims := map[string]int{}
	seqs := map[uint64]bool{}
	bySeq := map[uint64][]string{} // stream sequence -> outcome ids
	for _, m := range msgs {
		if m.accepted() {
			seqs[m.seq] = true
			for _, id := range m.outcomeIDs() {
				claims[id]++
				bySeq[m.seq] = append(bySeq[m.seq], id)
			}
		}
	}
	verdicts := map[string]int{}
	failures, collateralN := 0, 0
	fail := func(format string, args ...any) {
		failures++
		if failures <= 40 {
			t.Errorf(format, args...)
		}
	}
	for _, m := range msgs {
		if m.wantDup && !m.dup && m.refused == "" {
			fail("%s: published again inside the job dedup window, but the stream did not drop it as a duplicate", m.describe())
		}
		if m.dup {
			// The stream dropped it as a duplicate; its PubAck named the
			// first job's sequence, whose result its client gets.
			if len(s.found(m)) == 0 {
				fail("%s: dropped as a duplicate, but no result of the job it duplicates (seq %d) under %v", m.describe(), m.seq, m.outcomeIDs())
			}
			continue
		}
		if !m.accepted() {
			continue
		}
		ids := m.outcomeIDs()
		found := s.found(m)
		dl := s.deadLetters[m.seq]
		switch {
		case len(found) == 0:
			where := "no dead letter either"
			if len(dl) > 0 {
				where = fmt.Sprintf("only a dead letter, on %s", s.cfg.DLQSubject(dl[0].subject))
			}
			fail("%s: no result under %v (%s): a client waiting for it waits forever", m.describe(), ids, where)
			continue
		case len(found) > 1:
			fail("%s: results under both %v", m.describe(), found)
		}
		id := found[0]
		rs := s.mine(m, id)
		if len(rs) > 1 && (rs[0].jobSeq != 0 || len(rs) > claims[id]) {
			var all []string
			for _, sr := range rs {
				all = append(all, describeResult(&sr.r))
			}
			fail("%s: %d results stored under %s, want one: %v", m.describe(), len(rs), id, all)
		}
		// A client reading the stored result gets the last one.
		r := &rs[len(rs)-1].r
		verdict := "ok"
		if !r.OK {
			verdict = "failed"
			if r.Error != nil {
				verdict = r.Error.Kind
			}
		}
		verdicts[verdict]++
		if r.ID != id {
			fail("%s: the result under %s names job %q", m.describe(), id, r.ID)
		}
		switch {
		case !m.good && m.want != wantBad && collateral(r):
			// It never ran: every attempt found its session's worker
			// killed by another job (today's agent charges that to the
			// job's budget). Good jobs, with 5 attempts, must not end so.
			collateralN++
		default:
			switch m.want {
			case wantOK:
				if !r.OK {
					fail("%s: want ok, got %s", m.describe(), describeResult(r))
				} else if !jsonEqual(r.Result, m.echo) {
					fail("%s: the result under %s is not this job's: it echoes %s, want %s", m.describe(), id,
						strconv.Quote(truncLabel(string(r.Result))), strconv.Quote(truncLabel(string(m.echo))))
				}
			case wantSession:
				var rep corpusSessionReply
				switch {
				case !r.OK:
					fail("%s: want ok, got %s", m.describe(), describeResult(r))
				case json.Unmarshal(r.Result, &rep) != nil || rep.Count < 1:
					fail("%s: the result %s is not a session reply", m.describe(), truncLabel(string(r.Result)))
				case r.Session != m.session || rep.PID != r.WorkerPID:
					fail("%s: the result is another job's: session %q on pid %d (reply %+v)", m.describe(), r.Session, r.WorkerPID, rep)
				case rep.Seq != nil && !jsonEqual(rep.Seq, m.echo):
					fail("%s: the result is another job's: the worker saw payload %s", m.describe(), rep.Seq)
				}
			case wantBad, wantApp:
				if r.OK || r.Error == nil || r.Error.Kind != m.want {
					fail("%s: want a %s result under %s, got %s", m.describe(), m.want, id, describeResult(r))
				}
			case wantErr:
				if r.OK {
					fail("%s: want a failed result, got %s", m.describe(), describeResult(r))
				}
			}
		}
		// A dead letter exactly when the verdict says so, for this
		// message, under the same id.
		dead := !r.OK && r.Error != nil && slices.Contains([]string{queue.KindExhausted, queue.KindBadRequest, "poison"}, r.Error.Kind)
		switch {
		case claims[id] > 1 && rs[0].jobSeq == 0:
			// Several accepted messages end under this id (a resubmission
			// without Nats-Msg-Id): only one of them ran to the verdict.
		case dead && len(dl) == 0:
			fail("%s: result %s under %s but no dead letter for stream seq %d", m.describe(), describeResult(r), id, m.seq)
		case dead && dl[0].subject != id:
			fail("%s: result under %s but its dead letter is under %s", m.describe(), id, dl[0].subject)
		case !dead && len(dl) > 0:
			fail("%s: result %s and also a dead letter (%s: %s): two outcomes", m.describe(), describeResult(r), dl[0].d.Kind, truncLabel(dl[0].d.Error))
		}
		if len(dl) > 1 {
			fail("%s: %d dead letters for stream seq %d", m.describe(), len(dl), m.seq)
		}
	}
	// Nothing stored that no accepted message accounts for.
	var stray []string
	for id, rs := range s.results {
		for _, sr := range rs {
			if !all {
				break
			}
			if claims[id] == 0 || (sr.jobSeq != 0 && !slices.Contains(bySeq[sr.jobSeq], id)) {
				stray = append(stray, fmt.Sprintf("result under %s for job_seq %d: %s", id, sr.jobSeq, describeResult(&sr.r)))
			}
		}
	}
	for seq, dls := range s.deadLetters {
		if all && !seqs[seq] {
			for _, d := range dls {
				stray = append(stray, fmt.Sprintf("dead letter under %s for stream seq %d: %s", d.subject, seq, truncLabel(d.d.Error)))
			}
		}
	}
	slices.Sort(stray)
	for _, s := range stray {
		fail("stored but no accepted message maps to it: %s", s)
	}
	for _, u := range s.undecodable {
		fail("not a valid envelope: %s", u)
	}
	if failures > 40 {
		t.Errorf("... %d outcome failures in all", failures)
	}
	var vs []string
	for v, n := range verdicts {
		vs = append(vs, fmt.Sprintf("%s %d", v, n))
	}
	slices.Sort(vs)
	t.Logf("verdicts: %s; %d jobs exhausted without running, by checkout failures after another job killed their worker",
		strings.Join(vs, ", "), collateralN)
}

// collateral reports whether r is a job exhausted by checkout failures: its
// worker was found dead, killed by another job.
func collateral(r *queue.Result) bool {
	return !r.OK && r.Error != nil && r.Error.Kind == queue.KindExhausted && strings.Contains(r.Error.Message, "checkout failed")
}

// corpusSessionReply is what the good session jobs return: the Go test
// worker's "session" and the Python example's "session_info" (which has no
// seq).
type corpusSessionReply struct {
	PID        int             `json:"pid"`
	NewSession bool            `json:"new_session"`
	Count      int             `json:"count"`
	Seq        json.RawMessage `json:"seq"`
}

// checkGoodTraffic checks the good sessions. A session's jobs that ran on
// one worker (a binding) have the call counts 1, 2, ... there, and only
// count 1 was told new_session. Only one binding may be on a worker still
// alive: the session moves only when its worker died (killed by a poison
// job of another session). Within a binding, the jobs that ran on their
// first delivery ran in submission order; a job sent back by a fault may
// run later.
func checkGoodTraffic(t *testing.T, msgs []*corpusMsg, s *corpusSnapshot) {
	t.Helper()
	type binding struct {
		agent string
		pid   int
	}
	type run struct {
		m   *corpusMsg
		r   *queue.Result
		rep corpusSessionReply
	}
	sessions := map[string][]run{}
	lost := map[string]bool{}
	retried, moves, maxAttempt := 0, 0, 0
	for _, m := range msgs {
		if !m.good || !m.accepted() || m.session == "" {
			continue
		}
		rs := s.mine(m, m.bodyID)
		if len(rs) == 0 || !rs[len(rs)-1].r.OK {
			lost[m.session] = true // reported by checkOutcomes
			continue
		}
		r := &rs[len(rs)-1].r
		var rep corpusSessionReply
		if json.Unmarshal(r.Result, &rep) != nil {
			lost[m.session] = true
			continue
		}
		if r.Attempt > 1 {
			retried++
		}
		maxAttempt = max(maxAttempt, r.Attempt)
		sessions[m.session] = append(sessions[m.session], run{m, r, rep})
	}
	for sess, runs := range sessions {
		if lost[sess] {
			continue
		}
		bindings := map[binding][]run{}
		for _, x := range runs {
			b := binding{x.r.Agent, x.r.WorkerPID}
			bindings[b] = append(bindings[b], x)
		}
		moves += len(bindings) - 1
		live := 0
		for b, brs := range bindings {
			if !gone(b.pid) {
				live++
			}
			slices.SortFunc(brs, func(x, y run) int { return x.rep.Count - y.rep.Count })
			last := -1
			for i, x := range brs {
				if i > 0 && x.rep.Count == brs[i-1].rep.Count {
					t.Errorf("good session %s on %s/%d: jobs %s and %s both have call count %d", sess, b.agent, b.pid, brs[i-1].r.ID, x.r.ID, x.rep.Count)
				}
				if (x.rep.Count == 1) != x.r.NewSession || x.rep.NewSession != x.r.NewSession {
					t.Errorf("good session %s on %s/%d: job %s has call count %d there, but new_session=%v (the worker saw %v)",
						sess, b.agent, b.pid, x.r.ID, x.rep.Count, x.r.NewSession, x.rep.NewSession)
				}
				if x.r.Attempt == 1 {
					if x.m.index < last {
						t.Errorf("good session %s on %s/%d: job %s (#%d) ran after job #%d, both on their first delivery: out of order",
							sess, b.agent, b.pid, x.r.ID, x.m.index, last)
					}
					last = x.m.index
				}
			}
		}
		if live > 1 {
			t.Errorf("good session %s ran on %d workers that are still alive: it moved without a fault (%d bindings)", sess, live, len(bindings))
		}
	}
	t.Logf("good traffic: %d sessions, %d session moves (each after its worker died), %d good session jobs delivered more than once (at most %d times)",
		len(sessions), moves, retried, maxAttempt)
}

// checkPoisonBound checks that no job killed more workers than the poison
// bound allows: per job, from the Go workers' execution log (every run of a
// worker-killing command is a death), and per agent, from its pool stats.
func checkPoisonBound(t *testing.T, f *corpusFleet, msgs []*corpusMsg) {
	t.Helper()
	execs := fleettest.ReadExecLog(t, f.execLog)
	allow := map[string]int{}
	// Only a job that reached a Go worker (it is in the execution log) may
	// have killed one.
	reachedGo := func(m *corpusMsg) bool {
		for _, id := range m.outcomeIDs() {
			if len(execs[id]) > 0 {
				return true
			}
		}
		return false
	}
	for _, m := range msgs {
		if !m.accepted() {
			continue
		}
		switch m.poison {
		case poisonGo:
			if reachedGo(m) {
				allow[goAgent] += min(poisonBound, m.attempts)
			}
			for _, id := range m.outcomeIDs() {
				if n := len(execs[id]); n > poisonBound {
					t.Errorf("%s: killed %d Go workers (max_attempts %d); the poison bound is %d", m.describe(), n, m.attempts, poisonBound)
				}
			}
		case poisonHang:
			// A timeout kills the worker: a death like any other.
			if reachedGo(m) {
				allow[goAgent] += min(poisonBound, m.attempts)
			}
			for _, id := range m.outcomeIDs() {
				if n := len(execs[id]); n > poisonBound {
					t.Errorf("%s: timed out %d times, each killing a Go worker (max_attempts %d); the poison bound is %d", m.describe(), n, m.attempts, poisonBound)
				}
			}
		case poisonPython:
			allow[pyAgent] += min(poisonBound, m.attempts)
		case poisonAny:
			allow[goAgent] += min(poisonBound, m.attempts)
			allow[pyAgent] += min(poisonBound, m.attempts)

		}
	}
	for _, name := range []string{goAgent, pyAgent} {
		info, err := agentInfo(f.nc, name)
		if err != nil {
			t.Errorf("agent %s: info: %v", name, err)
			continue
		}
		t.Logf("agent %s: %d workers removed (allowed %d), %d restarts, jobs %+v", name, info.Pool.Removed, allow[name], info.Pool.Restarts, info.Counters)
		if int(info.Pool.Removed) > allow[name] {
			t.Errorf("agent %s: %d workers died, more than the poison bound allows (%d per poison job: %d in all)",
				name, info.Pool.Removed, poisonBound, allow[name])
		}
	}
}

// agentInfo asks an agent process for its state over NATS.
func agentInfo(nc *nats.Conn, name string) (*agent.ServiceInfo, error) {
	var info agent.ServiceInfo
	var last error
	for range 3 {
		m, err := nc.Request("fleet.agent."+name+".info", nil, 10*time.Second)
		if err != nil {
			last = err
			continue
		}
		if err := json.Unmarshal(m.Data, &info); err != nil {
			return nil, err
		}
		return &info, nil
	}
	return nil, last
}

// pollUntil calls cond every interval until it returns nil or timeout
// passes, and returns its last error then.
func pollUntil(timeout, interval time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		sleepCtx(context.Background(), interval)
	}
}

// jsonEqual compares two JSON texts by value: numbers by exact value
// (integers of any size as integers), object members by key (the last of
// duplicate keys wins, as in Go and Python); absent equals null.
func jsonEqual(a, b []byte) bool {
	va, errA := decodeNumbers(a)
	vb, errB := decodeNumbers(b)
	return errA == nil && errB == nil && valueEqual(va, vb)
}

func decodeNumbers(b []byte) (any, error) {
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

func valueEqual(a, b any) bool {
	switch a := a.(type) {
	case json.Number:
		b, ok := b.(json.Number)
		if !ok {
			return false
		}
		return numberEqual(a.String(), b.String())
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !valueEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !valueEqual(v, w) {
				return false
			}
		}
		return true
	default:
		return a == b
	}
}

// numberEqual compares JSON numbers: integers exactly, any other number as
// the float64 both Go and Python read it as.
func numberEqual(a, b string) bool {
	isInt := func(s string) bool { return !strings.ContainsAny(s, ".eE") }
	if isInt(a) && isInt(b) {
		ia, okA := new(big.Int).SetString(a, 10)
		ib, okB := new(big.Int).SetString(b, 10)
		return okA && okB && ia.Cmp(ib) == 0
	}
	fa, errA := strconv.ParseFloat(a, 64)
	fb, errB := strconv.ParseFloat(b, 64)
	return errA == nil && errB == nil && fa == fb
}
