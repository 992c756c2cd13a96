package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
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
	f.Fuzz(func(t *testing.T, in []byte) {
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
