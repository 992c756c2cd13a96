package protocol

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
)

// DefaultMaxFrame is the largest frame body accepted when none is configured.
const DefaultMaxFrame = 16 << 20

// headerLen is the size of the big-endian length prefix.
const headerLen = 4

var (
	// ErrProtocol is matched (errors.Is) by every framing or decoding
	// violation: the peer is not speaking protocol v1 and must not be trusted
	// with another frame.
	ErrProtocol = errors.New("protocol: protocol error")
	// ErrEmptyFrame is a frame whose length prefix is zero.
	ErrEmptyFrame = fmt.Errorf("%w: zero-length frame", ErrProtocol)
	// ErrFrameTooLarge is a frame whose length prefix exceeds the maximum.
	ErrFrameTooLarge = fmt.Errorf("%w: frame exceeds max frame size", ErrProtocol)
	// ErrNotJSON is a frame whose body is not one JSON object.
	ErrNotJSON = fmt.Errorf("%w: frame is not a JSON object", ErrProtocol)
	// ErrNoType is a JSON object without a "type" field.
	ErrNoType = fmt.Errorf("%w: message has no type", ErrProtocol)
)

// FrameSizeError reports a frame length outside 1..Max.
type FrameSizeError struct {
	Size int64
	Max  int
}

func (e *FrameSizeError) Error() string {
	if e.Size == 0 {
		return ErrEmptyFrame.Error()
	}
	return fmt.Sprintf("protocol: frame of %d bytes exceeds max frame size %d", e.Size, e.Max)
}

// Is makes a FrameSizeError match ErrProtocol and the specific sentinel.
func (e *FrameSizeError) Is(target error) bool {
	switch target {
	case ErrProtocol:
		return true
	case ErrEmptyFrame:
		return e.Size == 0
	case ErrFrameTooLarge:
		return e.Size > 0
	}
	return false
}

// Reader reads frames from a stream. It is not safe for concurrent use.
type Reader struct {
	r   *bufio.Reader
	max int
	buf []byte
	hdr [headerLen]byte
}

// NewReader returns a Reader over r accepting frames up to maxFrame bytes
// (DefaultMaxFrame if maxFrame <= 0).
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: maxFrame}
}

// ReadFrame returns the next frame body. The slice is valid only until the
// next call. At a clean end of stream it returns io.EOF; a stream that ends
// inside a frame returns io.ErrUnexpectedEOF.
func (r *Reader) ReadFrame() ([]byte, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(r.hdr[:]))
	if n == 0 || n > int64(r.max) {
		return nil, &FrameSizeError{Size: n, Max: r.max}
	}
	if cap(r.buf) < int(n) {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	// Do not pin a huge buffer after one large frame.
	if cap(r.buf) > 1<<20 {
		r.buf = nil
	}
	return b, nil
}

// Read reads and decodes the next message into m, which is reset first.
// Raw fields in m own their bytes (they do not alias the reader's buffer).
func (r *Reader) Read(m *Message) error {
	b, err := r.ReadFrame()
	if err != nil {
		return err
	}
	return Decode(b, m)
}

// Decode parses one frame body into m, which is reset first.
func Decode(b []byte, m *Message) error {
	*m = Message{}
	if decodeOKResult(b, m) {
		return nil
	}
	if len(b) == 0 || firstNonSpace(b) != '{' {
		return ErrNotJSON
	}
	if err := json.Unmarshal(b, m); err != nil {
		return fmt.Errorf("%w: %v", ErrNotJSON, err)
	}
	if m.Type == "" {
		return ErrNoType
	}
	return nil
}

// The start and middle of a successful result frame as the Python SDK (and
// any encoder without spaces that keeps the protocol's key order) writes it.
var (
	okResultHead = []byte(`{"type":"result","id":`)
	okResultMid  = []byte(`,"ok":true,"result":`)
)

// okResultMaxValue bounds the result a frame may hold for decodeOKResult. A
// JSON value of n bytes nests at most n/2 deep, so one under it, nested once
// more in the frame, stays within encoding/json's depth limit (10 000),
// which json.Valid on the value alone would not check.
const okResultMaxValue = 16 << 10

// decodeOKResult decodes the commonest frame, a successful result, without
// reflection: b must be exactly {"type":"result","id":N,"ok":true,"result":V}
// with N a plain unsigned integer that fits in a uint64 and V one valid JSON
// value under okResultMaxValue bytes, no space around it. Anything else
// returns false with m untouched, for json.Unmarshal; what it accepts,
// json.Unmarshal decodes to the same Message (FuzzDecode and
// TestDecodeOKResultAgrees check).
func decodeOKResult(b []byte, m *Message) bool {
	rest, ok := bytes.CutPrefix(b, okResultHead)
	if !ok {
		return false
	}
	var id uint64
	n := 0
	for ; n < len(rest) && '0' <= rest[n] && rest[n] <= '9'; n++ {
		d := uint64(rest[n] - '0')
		if id > (math.MaxUint64-d)/10 {
			return false
		}
		id = id*10 + d
	}
	if n == 0 || (n > 1 && rest[0] == '0') {
		return false
	}
	v, ok := bytes.CutPrefix(rest[n:], okResultMid)
	if !ok || len(v) < 2 || v[len(v)-1] != '}' {
		return false
	}
	v = v[:len(v)-1]
	if len(v) >= okResultMaxValue || isSpace(v[0]) || isSpace(v[len(v)-1]) || !json.Valid(v) {
		return false
	}
	m.Type, m.ID, m.OK, m.Result = TypeResult, id, Bool(true), bytes.Clone(v)
	return true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func firstNonSpace(b []byte) byte {
	for _, c := range b {
		if !isSpace(c) {
			return c
		}
	}
	return 0
}

// Writer writes frames to a stream. It is not safe for concurrent use.
type Writer struct {
	w   io.Writer
	max int
	buf []byte
}

// NewWriter returns a Writer over w refusing frames over maxFrame bytes
// (DefaultMaxFrame if maxFrame <= 0).
func NewWriter(w io.Writer, maxFrame int) *Writer {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Writer{w: w, max: maxFrame, buf: make([]byte, headerLen, 4096)}
}

// Write encodes m and writes it as one frame with a single write call.
func (w *Writer) Write(m *Message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("protocol: encode %s: %w", m.Type, err)
	}
	return w.WriteFrame(body)
}

// WriteFrame writes body as one frame with a single write call, so that a
// frame is never interleaved with another writer's bytes on a pipe.
func (w *Writer) WriteFrame(body []byte) error {
	if len(body) == 0 || len(body) > w.max {
		return &FrameSizeError{Size: int64(len(body)), Max: w.max}
	}
	buf := append(w.buf[:headerLen], body...)
	binary.BigEndian.PutUint32(buf, uint32(len(body)))
	_, err := w.w.Write(buf)
	if cap(buf) <= 1<<20 {
		w.buf = buf[:headerLen]
	}
	return err
}

// AppendFrame appends body as one frame to dst and returns the result.
func AppendFrame(dst, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}
