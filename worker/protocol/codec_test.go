package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	in := []Message{
		{Type: TypeReady, Protocol: Version, PID: 42, Commands: []string{"echo"}},
		{Type: TypeCall, ID: 7, Command: "predict", Session: "s1", NewSession: true, JobID: "j", Attempt: 1, DeadlineMS: 5, Payload: []byte(`{"x":1}`)},
		{Type: TypeResult, ID: 7, OK: Bool(true), Result: []byte(`[1,2]`)},
		{Type: TypeResult, ID: 8, OK: Bool(false), Error: &ErrorInfo{Type: "ValueError", Message: "bad", Retryable: true}},
		{Type: TypePing, ID: 9},
	}
	for i := range in {
		if err := w.Write(&in[i]); err != nil {
			t.Fatal(err)
		}
	}
	r := NewReader(&buf, 0)
	for i := range in {
		var m Message
		if err := r.Read(&m); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if m.Type != in[i].Type || m.ID != in[i].ID || string(m.Payload) != string(in[i].Payload) || string(m.Result) != string(in[i].Result) {
			t.Fatalf("frame %d: got %+v want %+v", i, m, in[i])
		}
	}
	var m Message
	if err := r.Read(&m); err != io.EOF {
		t.Fatalf("want io.EOF at end, got %v", err)
	}
}

func frame(n uint32, body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	return append(b, body...)
}

func TestReaderErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		in      []byte
		max     int
		wantErr error
	}{
		{"zero length", frame(0, ""), 0, ErrEmptyFrame},
		{"over max", frame(11, `{"type":"x"}`), 10, ErrFrameTooLarge},
		{"huge length", frame(0xFFFFFFFF, ""), 0, ErrFrameTooLarge},
		{"not json", frame(5, "hello"), 0, ErrNotJSON},
		{"json array", frame(2, "[]"), 0, ErrNotJSON},
		{"truncated json", frame(5, `{"typ`), 0, ErrNotJSON},
		{"wrong types", frame(26, `{"type":"result","id":"x"}`), 0, ErrNotJSON},
		{"no type", frame(8, `{"id":1}`), 0, ErrNoType},
		{"short header", []byte{0, 0}, 0, io.ErrUnexpectedEOF},
		{"short body", frame(10, "{}"), 0, io.ErrUnexpectedEOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tc.in), tc.max)
			var m Message
			err := r.Read(&m)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
				t.Fatalf("%v does not match ErrProtocol", err)
			}
		})
	}
}

func TestWriterRefusesOversize(t *testing.T) {
	t.Parallel()
	w := NewWriter(io.Discard, 8)
	err := w.WriteFrame([]byte(`{"type":"ping"}`))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("got %v", err)
	}
	if err := w.WriteFrame(nil); !errors.Is(err, ErrEmptyFrame) {
		t.Fatalf("got %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(frame(12, `{"type":"x"}`))
	f.Add(frame(0, ""))
	f.Add(frame(3, `{"t`))
	f.Add(frame(29, `{"type":"result","ok":true,}`))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte(`{"type":"result","id":18446744073709551615,"ok":true,"result":{"a":[1,"}"]}}`))
	f.Add([]byte(`{"type":"result","id":7,"ok":true,"result":null}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		// The fast path for successful results agrees with json.Unmarshal
		// wherever it takes a body.
		var fast, slow Message
		if decodeOKResult(in, &fast) {
			if err := json.Unmarshal(in, &slow); err != nil {
				t.Fatalf("fast path took %q, which json.Unmarshal refuses: %v", in, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("body %q: fast path %+v, json.Unmarshal %+v", in, fast, slow)
			}
		}
		r := NewReader(bytes.NewReader(in), 1024)
		for {
			var m Message
			err := r.Read(&m)
			if err == nil {
				if m.Type == "" {
					t.Fatal("decoded message without type")
				}
				continue
			}
			if err == io.EOF || err == io.ErrUnexpectedEOF || errors.Is(err, ErrProtocol) {
				// A protocol error ends the stream, as the agent does.
				return
			}
			t.Fatalf("untyped error: %v", err)
		}
	})
}

func BenchmarkWriteRead(b *testing.B) {
	var buf bytes.Buffer
	w := NewWriter(&buf, 0)
	r := NewReader(&buf, 0)
	m := Message{Type: TypeCall, ID: 1, Command: "echo", Payload: bytes.Repeat([]byte("1"), 100)}
	var out Message
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		m.ID = uint64(i)
		if err := w.Write(&m); err != nil {
			b.Fatal(err)
		}
		if err := r.Read(&out); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeResult: a successful result frame of a 100-byte payload,
// as the Python SDK writes it (the fast path), and the same frame with a
// space that sends it through json.Unmarshal.
func BenchmarkDecodeResult(b *testing.B) {
	payload := `{"x":"` + string(bytes.Repeat([]byte("a"), 92)) + `"}`
	for _, tc := range []struct{ name, body string }{
		{"fast", `{"type":"result","id":12345,"ok":true,"result":` + payload + `}`},
		{"general", `{"type":"result","id":12345,"ok":true,"result":` + payload + ` }`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			body := []byte(tc.body)
			var m Message
			b.ReportAllocs()
			for b.Loop() {
				if err := Decode(body, &m); err != nil || !m.Succeeded() {
					b.Fatal(err)
				}
			}
		})
	}
}

// The fast path for successful results decodes what json.Unmarshal decodes,
// to the same Message, and leaves the rest to it: edge cases by hand (the
// fuzzer explores around them).
func TestDecodeOKResultAgrees(t *testing.T) {
	t.Parallel()
	const head = `{"type":"result","id":`
	for _, tc := range []struct {
		body string
		fast bool
	}{
		{head + `1,"ok":true,"result":1}`, true},
		{head + `0,"ok":true,"result":"x"}`, true},
		{head + `18446744073709551615,"ok":true,"result":[]}`, true},
		{head + `7,"ok":true,"result":{"s":"}\"}"}}`, true},
		{head + `7,"ok":true,"result":null}`, true},
		{head + `18446744073709551616,"ok":true,"result":1}`, false}, // overflows uint64
		{head + `01,"ok":true,"result":1}`, false},                   // not a JSON number
		{head + `-1,"ok":true,"result":1}`, false},
		{head + `1.0,"ok":true,"result":1}`, false},
		{head + `1,"ok":true,"result": 1}`, false},
		{head + `1,"ok":true,"result":1 }`, false},
		{head + `1,"ok":true,"result":1,"ok":false}`, false}, // a second key
		{head + `1,"ok":true,"result":1}}`, false},
		{head + `1,"ok":true,"result":}`, false},
		{head + `1,"ok":true,"result":{"a":1}`, false},
		{head + `1,"ok":false,"result":1}`, false},
		{`{"id":1,"type":"result","ok":true,"result":1}`, false},
		// Valid alone, but one level too deep inside the frame.
		{head + `1,"ok":true,"result":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`, false},
		{head + `1,"ok":true,"result":` + strings.Repeat("[", 8000) + strings.Repeat("]", 8000) + `}`, true},
	} {
		var fast Message
		name := tc.body
		if len(name) > 80 {
			name = name[:80] + "..."
		}
		if got := decodeOKResult([]byte(tc.body), &fast); got != tc.fast {
			t.Errorf("%s: fast path took it: %v, want %v", name, got, tc.fast)
		}
		var viaDecode, slow Message
		derr := Decode([]byte(tc.body), &viaDecode)
		serr := json.Unmarshal([]byte(tc.body), &slow)
		if (derr == nil) != (serr == nil) {
			t.Errorf("%s: Decode error %v, json.Unmarshal error %v", name, derr, serr)
			continue
		}
		if derr == nil && !reflect.DeepEqual(viaDecode, slow) {
			t.Errorf("%s: Decode %+v, json.Unmarshal %+v", name, viaDecode, slow)
		}
	}
}
