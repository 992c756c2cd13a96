package reliability_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/procfleet/procfleet/queue"
)

// This file generates the corpus of TestCorpus: job envelopes, valid and
// invalid, on valid and invalid subjects, as a hostile or careless client
// would publish them with a plain NATS client, plus the good traffic that
// runs alongside. Every message says what a client may expect of it; the
// test checks those expectations against what the fleet stored.

// What a message's outcome must be, beyond existing exactly once.
const (
	wantAny = "any"         // any verdict
	wantOK  = "ok"          // ok, and the result echoes the payload
	wantBad = "bad_request" // a bad_request result (and a dead letter)
	wantApp = "app"         // an app error (unknown command, ...)
	wantErr = "error"       // any failed verdict
	// ok, with the session's call count on its worker (a good session job)
	wantSession = "session"
)

// How a message may kill workers, for the poison bound.
const (
	poisonNone   = iota
	poisonGo     // its command kills the Go test worker on every attempt
	poisonPython // its payload kills a Python SDK worker (today's SDK: item 5; a frame over the worker's max frame)
	poisonHang   // it hangs the Go test worker until its timeout, which kills the worker
	poisonAny    // its timeout is so short that it may kill any worker
)

// pyMaxFrame is the Python workers' max frame (PROCFLEET_MAX_FRAME): smaller
// than the agent's (16 MiB), so that "over the worker's max frame" is
// reachable under the NATS server's 1 MiB max payload.
const pyMaxFrame = 256 << 10

// serverMaxPayload is the NATS server's max payload (its default).
const serverMaxPayload = 1 << 20

// corpusMsg is one message to publish and what is expected of it.
type corpusMsg struct {
	label   string // the case, for the report
	subject string
	hdrID   string // Nats-Msg-Id; "" sends none
	body    []byte
	// extra headers, sent after Nats-Msg-Id (a second Nats-Msg-Id value
	// goes here).
	extra map[string][]string
	// altHdrID is another reading of hdrID that the stream or the agent
	// may take (surrounding blanks trimmed): the outcome may be under
	// either reading.
	altHdrID string

	// bodyID is the envelope's "id" as a string when it has one (it may
	// be an invalid token); bodyIDIsString is false for a non-string id.
	bodyID         string
	hasBodyID      bool
	bodyIDIsString bool
	// maybeBodyID: the body breaks after its id, so whether the id counts
	// is the implementation's choice; the outcome may be under either.
	maybeBodyID bool
	// seqSquat: the body id is "seq-<N>", the fallback id the next
	// message, which has no id at all, will get. Filled in at publish.
	seqSquat bool

	want     string
	echo     json.RawMessage // the payload, for wantOK
	poison   int
	attempts int // the attempt budget the agent applies (max_attempts, default 5)
	// wantDup: the stream must drop it as a duplicate (its Nats-Msg-Id
	// was published moments before, inside the job dedup window).
	wantDup bool

	// Good traffic.
	good    bool
	session string
	index   int // position in its session

	// Filled in when published.
	seq     uint64 // stream sequence of the PubAck
	dup     bool   // the stream dropped it as a duplicate
	refused string // why the publish was refused; "" if accepted
}

// accepted reports whether the jobs stream took the message as a new one.
func (m *corpusMsg) accepted() bool { return m.refused == "" && !m.dup && m.seq != 0 }

// outcomeIDs are the ids under which a client looks for the outcome of an
// accepted message, by the documented rule:
//
//  1. a body id and a Nats-Msg-Id that are both set and differ make a
//     bad_request filed under the Nats-Msg-Id, or under
//     "seq-<stream sequence>" if that is not a valid token (a Nats-Msg-Id
//     "<id>-replay-<n>" agrees with body id <id>);
//  2. otherwise the body id if it is a valid token, else Nats-Msg-Id if
//     valid, else "seq-<stream sequence>".
//
// Usually one id; two where the body breaks after its id, so that whether
// the id counts is the implementation's choice.
func (m *corpusMsg) outcomeIDs() []string {
	ids := m.outcomeIDsFor(m.hdrID)
	if m.altHdrID != "" {
		for _, id := range m.outcomeIDsFor(m.altHdrID) {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func (m *corpusMsg) outcomeIDsFor(hdrID string) []string {
	seqID := "seq-" + strconv.FormatUint(m.seq, 10)
	hdrOK := hdrID != "" && queue.ValidToken(hdrID)
	rule := func(bodySet bool) string {
		bodyOK := bodySet && m.bodyIDIsString && queue.ValidToken(m.bodyID)
		switch {
		case bodySet && hdrID != "" && !agrees(m.bodyID, hdrID):
			if hdrOK {
				return hdrID
			}
			return seqID
		case bodyOK:
			return m.bodyID
		case hdrOK:
			return hdrID
		default:
			return seqID
		}
	}
	ids := []string{rule(m.bodyIDSet())}
	if m.maybeBodyID {
		if alt := rule(false); alt != ids[0] {
			ids = append(ids, alt)
		}
	}
	return ids
}

// bodyIDSet reports whether the body has an id: any value but null and "".
func (m *corpusMsg) bodyIDSet() bool {
	return m.hasBodyID && (!m.bodyIDIsString || m.bodyID != "")
}

// agrees reports whether a body id and a Nats-Msg-Id name the same job.
func agrees(body, hdr string) bool {
	if body == hdr {
		return true
	}
	n, ok := strings.CutPrefix(hdr, body+"-replay-")
	if !ok || n == "" || body == "" {
		return false
	}
	_, err := strconv.ParseUint(n, 10, 64)
	return err == nil
}

// disagrees reports whether the body id and Nats-Msg-Id name different jobs.
func (m *corpusMsg) disagrees() bool {
	return m.bodyIDSet() && m.hdrID != "" && !agrees(m.bodyID, m.hdrID)
}

// field is one member of a JSON object, written in order; raw is its JSON
// text verbatim (so that bodies can hold what encoding/json never writes).
type field struct{ key, raw string }

func str(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func object(fs ...field) []byte {
	var b strings.Builder
	b.WriteByte('{')
	for i, f := range fs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(str(f.key))
		b.WriteByte(':')
		b.WriteString(f.raw)
	}
	b.WriteByte('}')
	return []byte(b.String())
}

// gen draws the corpus from a seeded generator: the same seed gives the
// same messages in the same order.
type gen struct {
	r     *rand.Rand
	tag   string // makes ids unique to this run
	n     int    // ids handed out
	msgs  []*corpusMsg
	count map[string]int // messages per label
	// owner names the agent whose partition holds a session, so that a
	// poison job can be aimed at the workers it kills.
	owner func(session string) string
}

func newGen(seed uint64, owner func(string) string) *gen {
	return &gen{
		owner: owner,
		r:     rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		tag:   strconv.FormatUint(seed%100000, 36),
		count: map[string]int{},
	}
}

// id returns a fresh valid job id.
func (g *gen) id(kind string) string {
	g.n++
	return fmt.Sprintf("c%s-%s-%d", g.tag, kind, g.n)
}

func pick[T any](g *gen, xs ...T) T { return xs[g.r.IntN(len(xs))] }

// nonce is a payload unique to the message, so that a result can be told
// from another job's.
func (g *gen) nonce() string { return fmt.Sprintf("n%d-%x", g.n, g.r.Uint64()) }

// Odd but valid JSON strings, as JSON text: NUL, lone surrogates (escaped;
// Go and Python both decode them), RTL and zero-width marks, emoji, a BOM,
// combining marks, quotes and escapes.
var oddStrings = []string{
	`"\u0000"`, `"a\u0000b"`, `"\ud800"`, `"\udfff\ud800"`, `"x\ud83d"`,
	`"\u200f\u202eevil\u202c"`, `"\u200b\u200d"`, `"😀🙈👩‍👩‍👧"`, `"\ufeffbom"`,
	`"e\u0301"`, `"\"quoted\\\n\t"`, `"ğ̸̢̹̬͍͓̔͑ÿ"`, `"\u2028\u2029"`, `""`, `"<>&"`,
	`"日本語"`, `"\uffff\ufffe"`,
}

// Numbers that mean the same to Go and to Python's json module.
var oddNumbers = []string{
	"0", "-0", "-1", "1e308", "-1e308", "1.7976931348623157e308", "5e-324",
	"9007199254740993", "1000000000000000000000000000000", "-9223372036854775809",
	"18446744073709551616", "0.1", "1E5", "123456789012345678901234567890.5", "-0.0",
}

// oddValue is a valid JSON value of bounded size and depth made of odd parts.
func (g *gen) oddValue(depth int) string {
	switch k := g.r.IntN(8); {
	case k < 2:
		return pick(g, oddStrings...)
	case k < 4:
		return pick(g, oddNumbers...)
	case k == 4:
		return pick(g, "true", "false", "null", "[]", "{}")
	case k == 5 && depth > 0:
		n := g.r.IntN(4)
		parts := make([]string, n)
		for i := range parts {
			parts[i] = g.oddValue(depth - 1)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case depth > 0:
		return string(g.oddObject(depth - 1))
	default:
		return `"plain"`
	}
}

func (g *gen) oddObject(depth int) []byte {
	n := g.r.IntN(4)
	fs := make([]field, 0, n)
	for range n {
		key := pick(g, `k`, "\u200fk", "😀", "\x00", "id", "a.b", "", "\ufeff")
		fs = append(fs, field{key, g.oddValue(depth)})
	}
	return object(fs...)
}

// echoPayload is a payload that both the Go and the Python echo worker
// return as it is: odd values around the message's nonce.
func (g *gen) echoPayload() string {
	return string(object(field{"nonce", str(g.nonce())}, field{"v", g.oddValue(2)}))
}

// deep is n nested arrays.
func deep(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }

// bigInt is an integer of n digits.
func bigInt(n int) string { return "1" + strings.Repeat("7", n-1) }

// subjects of the default queue.
const (
	anySubject = "fleet.job.any"
	sessPrefix = "fleet.job.s."
)

// poisonSubject is the subject of a job that may kill agent's workers:
// anonymous, or a session of its own on that agent, so that the corpus
// sessions' other jobs are only hit through their shared workers.
func (g *gen) poisonSubject(agent string) string {
	if g.r.IntN(2) == 0 {
		return anySubject
	}
	return sessPrefix + g.sessionOn(agent)
}

// sessionOn returns a fresh session id whose partition agent owns.
func (g *gen) sessionOn(agent string) string {
	for range 100000 {
		g.n++
		s := fmt.Sprintf("cp%s-%d", g.tag, g.n)
		if g.owner(s) == agent {
			return s
		}
	}
	panic("corpus: agent " + agent + " owns no partition")
}

func (g *gen) validSubject() (subject, session string) {
	if g.r.IntN(2) == 0 {
		return anySubject, ""
	}
	s := fmt.Sprintf("cs%s-%d", g.tag, g.r.IntN(6))
	return sessPrefix + s, s
}

func (g *gen) add(m *corpusMsg) *corpusMsg {
	if m.attempts == 0 {
		m.attempts = queue.DefaultMaxAttempts
	}
	g.msgs = append(g.msgs, m)
	g.count[m.label]++
	return m
}

// job adds a message whose envelope is fs plus, unless idRaw is "", an id;
// id is idRaw decoded when it is a JSON string.
func (g *gen) job(label, subject, hdr string, fs []field, idRaw string) *corpusMsg {
	m := &corpusMsg{label: label, subject: subject, hdrID: hdr}
	if idRaw != "" {
		fs = append([]field{{"id", idRaw}}, fs...)
		m.hasBodyID = true
		if err := json.Unmarshal([]byte(idRaw), &m.bodyID); err == nil {
			m.bodyIDIsString = true
		}
	}
	m.body = object(fs...)
	return g.add(m)
}

// echoJob adds a valid echo job with a fresh id (in body and header) that
// must succeed and echo its payload.
func (g *gen) echoJob(label, subject string, extra ...field) *corpusMsg {
	id := g.id("ok")
	payload := g.echoPayload()
	fs := append([]field{{"command", `"echo"`}, {"payload", payload}}, extra...)
	m := g.job(label, subject, id, fs, str(id))
	m.want, m.echo = wantOK, json.RawMessage(payload)
	return m
}

// must adds the cases every seed covers once: the holes of issue 9 and the
// sharpest edges, so that every run exercises each.
func (g *gen) must() {
	// Item 1: a job that fits, whose echoed result does not: its body
	// (with the Nats-Msg-Id header) is 200 bytes under the max payload.
	id := g.id("near-max")
	head := object(field{"id", str(id)}, field{"command", `"echo"`}, field{"max_attempts", "2"}, field{"payload", `""`})
	pad := serverMaxPayload - 200 - len(head) - len(id)
	m := g.job("payload near the server's max payload (result too big)", anySubject, id,
		[]field{{"command", `"echo"`}, {"max_attempts", "2"}, {"payload", str(strings.Repeat("x", pad))}}, str(id))
	m.want, m.poison, m.attempts = wantAny, poisonPython, 2
	// A message over the server's max payload is refused at publish.
	g.job("body over the server's max payload", anySubject, g.id("over-max"),
		[]field{{"command", `"echo"`}, {"payload", str(strings.Repeat("y", serverMaxPayload+10))}}, "").want = wantAny
	// Over the Python worker's max frame (a config mismatch the agent
	// cannot see): a poison for Python workers, fine for Go ones.
	id = g.id("over-frame")
	m = g.job("payload over the Python worker's max frame", anySubject, id,
		[]field{{"command", `"echo"`}, {"payload", str(strings.Repeat("z", pyMaxFrame+1000))}}, str(id))
	m.want, m.poison = wantAny, poisonPython

	// Item 2: wildcards in the session token.
	for _, s := range []string{"*", ">"} {
		id = g.id("wild")
		g.job("wildcard session subject", sessPrefix+s, id, []field{{"command", `"echo"`}}, str(id)).want = wantBad
	}
	// Item 3: an invalid body id with a valid Nats-Msg-Id.
	g.job("invalid body id, valid Nats-Msg-Id", anySubject, g.id("hdr"),
		[]field{{"command", `"echo"`}}, str("a.b")).want = wantBad
	// Item 4: id squatting. First a client publishes the owner's id in
	// its body under its own Nats-Msg-Id; then the owner publishes.
	owner := g.id("squat")
	m = g.job("squatter: body id of another job, own Nats-Msg-Id", anySubject, g.id("att"),
		[]field{{"command", `"echo"`}, {"payload", g.echoPayload()}}, str(owner))
	m.want = wantBad
	m = g.echoJobWithID("squatted owner", anySubject, owner)
	// The fallback namespace: a body id that is the seq-<N> id the next
	// message (no id at all) falls back to.
	m = g.job("body id seq-<next sequence>", anySubject, "", nil, "")
	m.seqSquat, m.hasBodyID, m.bodyIDIsString = true, true, true
	m.want, m.echo = wantOK, json.RawMessage(g.echoPayload())
	m = g.job("no id at all (after a seq squatter)", anySubject, "", nil, "")
	payload := g.echoPayload()
	m.body = object(field{"command", `"echo"`}, field{"payload", payload})
	m.want, m.echo = wantOK, json.RawMessage(payload)

	// Item 5: payloads Python's json refuses, with the largest budget.
	for _, p := range []string{bigInt(5000), deep(3000)} {
		id = g.id("py-poison")
		m = g.job("payload Python cannot decode, max_attempts 20, on a Python worker's session", sessPrefix+g.sessionOn(pyAgent), id,
			[]field{{"command", `"echo"`}, {"max_attempts", "20"}, {"payload", p}}, str(id))
		m.want, m.poison, m.attempts = wantAny, poisonPython, 20
	}
	// A worker-killing command with the largest budget.
	id = g.id("crash")
	m = g.job("command that kills the Go worker, max_attempts 20, on a Go worker's session", sessPrefix+g.sessionOn(goAgent), id,
		[]field{{"command", `"crash"`}, {"max_attempts", "20"}}, str(id))
	m.want, m.poison, m.attempts = wantErr, poisonGo, 20
	// Outcomes of big messages must still fit: a bad request and a poison
	// job near the max payload, with 60 KB headers (the server's limit is
	// 64 KB), so that their dead letters can hold neither the body nor, with
	// it, the headers; and a Nats-Msg-Id of 60 KB (not a valid id).
	const hdrPad = 60 << 10
	id = g.id("near-max-bad")
	head = object(field{"id", str(id)}, field{"command", `"echo"`}, field{"timeout_ms", `"soon"`}, field{"meta", `{"pad":""}`})
	m = g.job("bad request near the server's max payload, 60 KB header", anySubject, id,
		[]field{{"command", `"echo"`}, {"timeout_ms", `"soon"`}, {"meta", `{"pad":` + str(strings.Repeat("m", serverMaxPayload-hdrPad-300-len(head)-len(id))) + `}`}},
		str(id))
	m.want, m.extra = wantBad, map[string][]string{"X-Pad": {strings.Repeat("p", hdrPad)}}
	id = g.id("near-max-crash")
	head = object(field{"id", str(id)}, field{"command", `"crash"`}, field{"max_attempts", "20"}, field{"meta", `{"pad":""}`})
	m = g.job("poison job near the server's max payload, 60 KB header, on a Go worker's session", sessPrefix+g.sessionOn(goAgent), id,
		[]field{{"command", `"crash"`}, {"max_attempts", "20"}, {"meta", `{"pad":` + str(strings.Repeat("m", serverMaxPayload-hdrPad-300-len(head)-len(id))) + `}`}},
		str(id))
	m.want, m.poison, m.attempts = wantErr, poisonGo, 20
	m.extra = map[string][]string{"X-Pad": {strings.Repeat("p", hdrPad)}}
	g.job("Nats-Msg-Id of 60 KB, no body id", anySubject, strings.Repeat("H", hdrPad),
		[]field{{"command", `"echo"`}}, "").want = wantBad
	// Ids at the length limit; a replay-shaped Nats-Msg-Id that agrees
	// with a body id of 128 characters, though it is longer itself.
	padID := func(kind string, c string) string {
		s := g.id(kind) + "-"
		return s + strings.Repeat(c, 128-len(s))
	}
	g.echoJobWithID("body id and Nats-Msg-Id of 128 characters, session of 128", sessPrefix+strings.Repeat("S", 128), padID("long", "L"))
	m = g.echoJobWithID("body id of 128 characters, Nats-Msg-Id <id>-replay-1", anySubject, padID("rlong", "R"))
	m.hdrID = m.bodyID + "-replay-1"

	// Item 6: a huge timeout_ms on a quick job.
	id = g.id("timeout")
	g.job("timeout_ms 10^12", anySubject, id,
		[]field{{"command", `"echo"`}, {"timeout_ms", "1000000000000"}}, str(id)).want = wantBad
}

// echoJobWithID is echoJob under a given id.
func (g *gen) echoJobWithID(label, subject, id string) *corpusMsg {
	payload := g.echoPayload()
	m := g.job(label, subject, id, []field{{"command", `"echo"`}, {"payload", payload}}, str(id))
	m.want, m.echo = wantOK, json.RawMessage(payload)
	return m
}

// scenario adds one random case: one message, or a few that collide.
func (g *gen) scenario() {
	subject, _ := g.validSubject()
	switch k := g.r.IntN(112); {
	case k < 14: // valid, odd content everywhere it is allowed
		extra := []field{{"meta", string(g.oddObject(2))}}
		if g.r.IntN(2) == 0 {
			extra = append(extra, field{"timeout_ms", pick(g, "0", "30000", "100000")})
		}
		if g.r.IntN(2) == 0 {
			extra = append(extra, field{"max_attempts", pick(g, "0", "1", "20")})
		}
		g.echoJob("valid, odd unicode and numbers in payload and meta", subject, extra...)
	case k < 24: // a field of the wrong type or out of range
		f := pick(g,
			field{"timeout_ms", `"soon"`}, field{"timeout_ms", "1.5"}, field{"timeout_ms", "1e308"},
			field{"timeout_ms", "-1"}, field{"timeout_ms", bigInt(5000)}, field{"timeout_ms", "true"},
			field{"max_attempts", "-1"}, field{"max_attempts", "21"}, field{"max_attempts", `"3"`},
			field{"max_attempts", "1e308"}, field{"max_attempts", "9223372036854775808"},
			field{"command", "7"}, field{"command", "null"}, field{"command", `""`}, field{"command", `["echo"]`},
			field{"require_session", `"yes"`}, field{"require_session", "1"},
			field{"meta", `"text"`}, field{"meta", "[1]"}, field{"meta", "5"}, field{"meta", deep(3000)},
		)
		fs := []field{{"command", `"echo"`}}
		if f.key == "command" {
			fs = nil
		}
		id := g.id("type")
		g.job("wrong type or out of range: "+f.key+"="+truncLabel(f.raw), subject, id, append(fs, f), str(id)).want = wantBad
	case k < 32: // an invalid body id
		raw := pick(g, `"\u0000"`, `"\ud800"`, `"\u200fid"`, `"😀"`, `"a.b"`, `"*"`, `">"`, `"a b"`,
			str(strings.Repeat("i", 129)), `7`, `{}`, `true`, `["x"]`, `1e308`)
		hdr := ""
		if g.r.IntN(2) == 0 {
			hdr = g.id("hdr")
		}
		m := g.job("invalid body id "+truncLabel(raw), subject, hdr, []field{{"command", `"echo"`}}, raw)
		m.want = wantBad
	case k < 38: // an odd Nats-Msg-Id, with or without a body id
		hdr := pick(g, "a.b", "ñ", "😀", "with space", "*", ">", strings.Repeat("h", 200), "\u200fx", "a:b", "\xff\xfe")
		hdr = hdr + "-" + strconv.Itoa(g.n) // unique, so the stream does not deduplicate
		g.n++
		if g.r.IntN(2) == 0 {
			m := g.job("odd Nats-Msg-Id, no body id", subject, hdr, nil, "")
			payload := g.echoPayload()
			m.body = object(field{"command", `"echo"`}, field{"payload", payload})
			// An invalid id that is present is a bad request.
			m.want = wantBad
		} else {
			id := g.id("body")
			m := g.job("odd Nats-Msg-Id, valid body id", subject, hdr, []field{{"command", `"echo"`}}, str(id))
			m.want = wantBad // they disagree
		}
	case k < 46: // odd unicode in the session token or the command
		if g.r.IntN(2) == 0 {
			s := pick(g, "bad:token", "ñ", "😀", "\u200fs", "%", "a#b", strings.Repeat("s", 129), "nul\x01")
			id := g.id("sess")
			m := g.job("invalid session token "+truncLabel(s), sessPrefix+s, id, []field{{"command", `"echo"`}}, str(id))
			m.want = wantBad
		} else {
			c := pick(g, `"\u0000"`, `"echo\u0000"`, `"\ud800"`, `"😀"`, `"\u202eohce"`, `"ECHO"`,
				str(strings.Repeat("c", 100000)))
			id := g.id("cmd")
			g.job("odd command "+truncLabel(c), subject, id, nil, str(id)).body =
				object(field{"id", str(id)}, field{"command", c}, field{"max_attempts", "2"})
			g.msgs[len(g.msgs)-1].want = wantApp
		}
	case k < 56: // a broken body
		id := g.id("body")
		cases := []struct {
			label, body string
			maybeID     bool
		}{
			{"not JSON", "hello", false},
			{"empty body", "", false},
			{"JSON array", `["echo"]`, false},
			{"JSON null", "null", false},
			{"JSON string", `"echo"`, false},
			{"JSON number", "1e308", false},
			{"truncated after the id", `{"id":` + str(id) + `,"command":"ec`, true},
			{"trailing garbage after the id", `{"id":` + str(id) + `,"command":"echo"} x`, true},
			{"invalid UTF-8 outside strings", "{\xff\xfe}", false},
			{"raw control character in a string", `{"id":` + str(id) + ",\"command\":\"ec\x01ho\"}", true},
			{"BOM before the object", "\ufeff{\"command\":\"echo\"}", false},
			{"nesting deeper than Go's limit", `{"command":"echo","payload":` + deep(10001) + `}`, false},
		}
		c := pick(g, cases...)
		m := g.add(&corpusMsg{label: "broken body: " + c.label, subject: subject, body: []byte(c.body), want: wantBad})
		if c.maybeID {
			m.hasBodyID, m.bodyIDIsString, m.bodyID, m.maybeBodyID = true, true, id, true
		}
		if g.r.IntN(2) == 0 {
			m.hdrID = g.id("hdr")
			if c.maybeID {
				m.want = wantBad
			}
		}
	case k < 63: // a payload only some workers can decode (item 5)
		p := pick(g, bigInt(5000), deep(3000), "\"bad utf-8 \xff\xfe\"", bigInt(4301))
		id := g.id("py-poison")
		m := g.job("payload Python cannot decode", g.poisonSubject(pyAgent), id,
			[]field{{"command", `"echo"`}, {"max_attempts", pick(g, "1", "2", "3")}, {"payload", p}}, str(id))
		m.want, m.poison, m.attempts = wantAny, poisonPython, attemptsOf(m.body)
	case k < 71: // a command that kills (or hangs) the Go test worker
		cmd := pick(g, "crash", "exit0", "garbage", "zero", "oversized", "half", "badid", "close_stdout", "hang")
		id := g.id("poison")
		attempts := pick(g, 1, 2, 3, 0)
		fs := []field{{"command", str(cmd)}}
		if attempts != 0 {
			fs = append(fs, field{"max_attempts", strconv.Itoa(attempts)})
		}
		m := g.job("command that breaks the Go worker: "+cmd, g.poisonSubject(goAgent), id, fs, str(id))
		m.want, m.poison, m.attempts = wantErr, poisonGo, budget(attempts)
		if cmd == "hang" {
			m.poison = poisonHang
			m.attempts = pick(g, 2, 3)
			m.body = object(field{"id", str(id)}, field{"command", `"hang"`},
				field{"timeout_ms", strconv.Itoa(100 + g.r.IntN(200))}, field{"max_attempts", strconv.Itoa(m.attempts)})
		}
	case k < 74: // an ordinary failure
		cmd := pick(g, "fail", "retry")
		id := g.id("fail")
		m := g.job("command that fails: "+cmd, subject, id, []field{{"command", str(cmd)}, {"max_attempts", "2"}}, str(id))
		m.want, m.attempts = wantErr, 2
	case k < 79: // item 4: the squat, either order
		owner := g.id("squat")
		squat := func() {
			g.job("squatter: body id of another job, own Nats-Msg-Id", subject, g.id("att"),
				[]field{{"command", `"echo"`}, {"payload", g.echoPayload()}}, str(owner)).want = wantBad
		}
		if g.r.IntN(2) == 0 {
			squat()
			g.echoJobWithID("squatted owner (squatter first)", subject, owner)
		} else {
			g.echoJobWithID("squatted owner (owner first)", subject, owner)
			squat()
		}
	case k < 82: // a Nats-Msg-Id "<id>-replay-<n>" agrees with body id <id>
		id := g.id("replay")
		if g.r.IntN(2) == 0 {
			g.echoJobWithID("body id <id>, Nats-Msg-Id <id>-replay-<n>", subject, id).hdrID = id + "-replay-" + strconv.Itoa(g.r.IntN(1000))
		} else {
			// Someone else's "replay" first: both jobs run, and each
			// client finds its own result by the PubAck's sequence.
			g.echoJobWithID("replay-shaped Nats-Msg-Id before the owner", subject, id).hdrID = id + "-replay-1"
			g.echoJobWithID("owner after a replay-shaped Nats-Msg-Id", subject, id)
		}
	case k < 84: // the same body id under two other Nats-Msg-Ids
		body := g.id("twin")
		for range 2 {
			g.job("one body id, two other Nats-Msg-Ids", subject, g.id("hdr"),
				[]field{{"command", `"echo"`}}, str(body)).want = wantBad
		}
	case k < 88: // an id reused: the stream drops the second as a duplicate
		id := g.id("reuse")
		g.echoJobWithID("id reused (first)", subject, id)
		g.echoJobWithID("id reused within the dedup window (dropped)", subject, id).wantDup = true
	case k < 91: // a resubmission without Nats-Msg-Id: the same job twice
		id := g.id("resub")
		payload := g.echoPayload()
		for range 2 {
			m := g.job("same job resubmitted without Nats-Msg-Id", subject, "",
				[]field{{"command", `"echo"`}, {"payload", payload}}, str(id))
			m.want, m.echo = wantOK, json.RawMessage(payload)
		}
	case k < 93: // two different jobs with one body id, no Nats-Msg-Id:
		// each is a new job with its own result, told apart by job_seq
		id := g.id("shared")
		for range 2 {
			payload := g.echoPayload()
			m := g.job("two jobs share a body id, no Nats-Msg-Id", subject, "",
				[]field{{"command", `"echo"`}, {"payload", payload}}, str(id))
			m.want, m.echo = wantOK, json.RawMessage(payload)
		}
	case k < 95: // missing ids
		m := g.job("no body id, no Nats-Msg-Id", subject, "", nil, "")
		payload := g.echoPayload()
		m.body = object(field{"command", `"echo"`}, field{"payload", payload})
		m.want, m.echo = wantOK, json.RawMessage(payload)
	case k < 97 || k >= 100: // headers a careless or hostile client sends
		g.headerCase(subject)
	default: // subjects no job should use
		s := pick(g, "fleet.job.any.x", "fleet.job.s.a.b", "fleet.job.p.3.x", "fleet.job.x", "fleet.jobs.any",
			"fleet.job.S.x", "fleet.job.s.*.x", "fleet.job.*", "fleet.job.>")
		id := g.id("subj")
		g.job("odd subject "+s, s, id, []field{{"command", `"echo"`}}, str(id)).want = wantAny
	}
}

// budget is the attempt budget the agent applies for max_attempts n.
func budget(n int) int {
	if n == 0 {
		return queue.DefaultMaxAttempts
	}
	return n
}

// headerCase adds a job with headers a careless or hostile client sends.
func (g *gen) headerCase(subject string) {
	id := g.id("hdrs")
	payload := g.echoPayload()
	fs := []field{{"command", `"echo"`}, {"payload", payload}}
	switch g.r.IntN(6) {
	case 4: // JetStream control headers a hostile client adds: each is
		// refused, or the job ends as usual and takes nobody else's
		// job with it (a rollup would purge the other jobs).
		kv := pick(g,
			[2]string{"Nats-Rollup", "all"}, [2]string{"Nats-Rollup", "sub"},
			[2]string{"Nats-TTL", "1s"}, [2]string{"Nats-TTL", "never"},
			[2]string{"Nats-Expected-Stream", "OTHER"}, [2]string{"Nats-Expected-Last-Sequence", "1"},
			[2]string{"Nats-Expected-Last-Subject-Sequence", "0"},
		)
		m := g.job("JetStream header "+kv[0]+": "+kv[1], subject, id, fs, str(id))
		m.extra = map[string][]string{kv[0]: {kv[1]}}
		m.want, m.echo = wantOK, json.RawMessage(payload)
	case 5: // an empty Nats-Msg-Id is none
		m := g.job("empty Nats-Msg-Id, no body id", subject, "", fs, "")
		m.extra = map[string][]string{"Nats-Msg-Id": {""}}
		m.want, m.echo = wantOK, json.RawMessage(payload)
	case 0: // two values: the stream and the agent read the first
		m := g.job("two Nats-Msg-Id values, the first agrees", subject, id, fs, str(id))
		m.extra = map[string][]string{"Nats-Msg-Id": {g.id("second")}}
		m.want, m.echo = wantOK, json.RawMessage(payload)
	case 1: // the header name in lower case is not Nats-Msg-Id
		m := g.job("nats-msg-id in lower case, no body id", subject, "", fs, "")
		m.extra = map[string][]string{"nats-msg-id": {id}}
		m.want, m.echo = wantOK, json.RawMessage(payload)
	case 2: // blanks around the id
		hdr := pick(g, " "+id, id+" ", "\t"+id, id+"\t", " "+id+" ")
		m := g.job("Nats-Msg-Id with blanks around it "+strconv.Quote(hdr), subject, hdr, fs, "")
		m.altHdrID, m.want = id, wantAny
	default: // a timeout too short for any worker
		m := g.job("timeout_ms 1", subject, id, append(fs, field{"timeout_ms", "1"}, field{"max_attempts", "3"}), str(id))
		m.want, m.poison, m.attempts = wantAny, poisonAny, 3
	}
}

// attemptsOf reads max_attempts from a body the generator wrote.
func attemptsOf(body []byte) int {
	var v struct {
		MaxAttempts int `json:"max_attempts"`
	}
	_ = json.Unmarshal(body, &v)
	return budget(v.MaxAttempts)
}

func truncLabel(s string) string {
	if len(s) > 24 {
		return fmt.Sprintf("%s…(%d bytes)", s[:16], len(s))
	}
	return s
}

// goodTraffic is what a well-behaved client publishes alongside: session
// jobs in order and anonymous jobs. A session job asks its worker for the
// session's call count there ("session" on the Go test worker,
// "session_info" on the Python example), so that the order and affinity of
// a session can be checked; an anonymous job echoes a unique payload.
//
// Good jobs ask for max_attempts 20: a job waiting for a worker that a
// poison job kills is redelivered, and today each such delivery is charged
// to the waiting job's budget (up to 5 deliveries of a good job were seen),
// so with the default 5 an innocent job could end "exhausted" without ever
// failing itself.
func (g *gen) goodTraffic(prefix string, sessions, perSession, anonymous int) []*corpusMsg {
	var out []*corpusMsg
	for s := range sessions {
		sess := fmt.Sprintf("%s%s-%d", prefix, g.tag, s)
		cmd := "session"
		if g.owner(sess) == pyAgent {
			cmd = "session_info"
		}
		for i := range perSession {
			id := fmt.Sprintf("%s%s-s%d-%d", prefix, g.tag, s, i)
			payload := string(object(field{"i", strconv.Itoa(i)}, field{"nonce", str(g.nonce())}))
			out = append(out, &corpusMsg{label: "good session job", subject: sessPrefix + sess, hdrID: id,
				body:   object(field{"id", str(id)}, field{"command", str(cmd)}, field{"max_attempts", "20"}, field{"payload", payload}),
				bodyID: id, hasBodyID: true, bodyIDIsString: true, want: wantSession, echo: json.RawMessage(payload),
				attempts: 20, good: true, session: sess, index: i})
		}
	}
	for i := range anonymous {
		id := fmt.Sprintf("%s%s-a%d", prefix, g.tag, i)
		payload := string(object(field{"a", strconv.Itoa(i)}, field{"nonce", str(g.nonce())}))
		out = append(out, &corpusMsg{label: "good anonymous job", subject: anySubject, hdrID: id,
			body:   object(field{"id", str(id)}, field{"command", `"echo"`}, field{"max_attempts", "20"}, field{"payload", payload}),
			bodyID: id, hasBodyID: true, bodyIDIsString: true, want: wantOK, echo: json.RawMessage(payload),
			attempts: 20, good: true})
	}
	return out
}

// plan interleaves the good traffic (kept in order within each session)
// with the corpus (kept in order within each scenario: the generator
// appended a scenario's messages together, and groups marks where each
// scenario starts).
func (g *gen) plan(good []*corpusMsg, groups []int) []*corpusMsg {
	// Sessions interleaved round-robin, anonymous jobs spread through.
	var goodOrder []*corpusMsg
	bySession := map[string][]*corpusMsg{}
	var sessions []string
	var anon []*corpusMsg
	for _, m := range good {
		if m.session == "" {
			anon = append(anon, m)
			continue
		}
		if bySession[m.session] == nil {
			sessions = append(sessions, m.session)
		}
		bySession[m.session] = append(bySession[m.session], m)
	}
	for len(sessions) > 0 || len(anon) > 0 {
		if len(anon) > 0 && (len(sessions) == 0 || g.r.IntN(3) == 0) {
			goodOrder, anon = append(goodOrder, anon[0]), anon[1:]
			continue
		}
		i := g.r.IntN(len(sessions))
		s := sessions[i]
		goodOrder = append(goodOrder, bySession[s][0])
		if bySession[s] = bySession[s][1:]; len(bySession[s]) == 0 {
			sessions = append(sessions[:i], sessions[i+1:]...)
		}
	}
	var scen [][]*corpusMsg
	for i, start := range groups {
		end := len(g.msgs)
		if i+1 < len(groups) {
			end = groups[i+1]
		}
		scen = append(scen, g.msgs[start:end])
	}
	var out []*corpusMsg
	for len(goodOrder) > 0 || len(scen) > 0 {
		if len(scen) == 0 || (len(goodOrder) > 0 && g.r.IntN(len(goodOrder)+len(scen)) < len(goodOrder)) {
			out, goodOrder = append(out, goodOrder[0]), goodOrder[1:]
			continue
		}
		i := g.r.IntN(len(scen))
		out = append(out, scen[i]...)
		scen = append(scen[:i], scen[i+1:]...)
	}
	return out
}

// corpus draws n random scenarios after the must-have cases, and the good
// traffic, and returns them in publish order.
func (g *gen) corpus(n, sessions, perSession, anonymous int) []*corpusMsg {
	var groups []int
	// The must-have cases are one scenario each, except the squat pairs,
	// which must stay in order: keep them all as one ordered block.
	groups = append(groups, 0)
	g.must()
	for range n {
		groups = append(groups, len(g.msgs))
		g.scenario()
	}
	good := g.goodTraffic("good", sessions, perSession, anonymous)
	return g.plan(good, groups)
}
