// Package jsonappend writes the JSON objects that procfleet sends once per
// job (a worker call, a stored result) without reflection, byte for byte as
// encoding/json would, for the common case. Anything it does not write
// exactly like encoding/json (a string that needs escaping, a raw value that
// is not valid JSON, a time outside RFC 3339) marks the object bad, and the
// caller falls back to encoding/json; the callers' tests check both paths
// against each other.
package jsonappend

import (
	"encoding/json"
	"strconv"
	"time"
)

// Plain reports whether s is printable ASCII that encoding/json writes
// unchanged: no control character, quote or backslash, and none of the
// characters it HTML-escapes (<, >, &).
func Plain(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c > 0x7e, c == '"', c == '\\', c == '<', c == '>', c == '&':
			return false
		}
	}
	return true
}

// Object appends members to an object under construction. Keys are given
// whole, with the separator and the colon: `,"session":`. The zero value is
// not usable; start with Start.
type Object struct {
	b   []byte
	bad bool
}

// Start begins an object on b with its first member written verbatim, e.g.
// `{"type":"call"` (first is trusted: it is a constant of the caller).
func Start(b []byte, first string) Object { return Object{b: append(b, first...)} }

// String appends key and the string v; an empty v is omitted when
// omitEmpty.
func (o *Object) String(key, v string, omitEmpty bool) {
	if v == "" && omitEmpty {
		return
	}
	if !Plain(v) {
		o.bad = true
		return
	}
	o.b = append(o.b, key...)
	o.b = append(o.b, '"')
	o.b = append(o.b, v...)
	o.b = append(o.b, '"')
}

// Int appends key and n, omitted when n is 0.
func (o *Object) Int(key string, n int64) {
	if n == 0 {
		return
	}
	o.b = append(o.b, key...)
	o.b = strconv.AppendInt(o.b, n, 10)
}

// Uint appends key and n, omitted when n is 0.
func (o *Object) Uint(key string, n uint64) {
	if n == 0 {
		return
	}
	o.b = append(o.b, key...)
	o.b = strconv.AppendUint(o.b, n, 10)
}

// Bool appends key and v; a false v is omitted when omitEmpty.
func (o *Object) Bool(key string, v, omitEmpty bool) {
	if !v && omitEmpty {
		return
	}
	o.b = append(o.b, key...)
	o.b = strconv.AppendBool(o.b, v)
}

// Raw appends key and the JSON value v verbatim (not compacted), omitted
// when v is empty. A v that is not valid JSON marks the object bad.
func (o *Object) Raw(key string, v []byte) {
	if len(v) == 0 {
		return
	}
	if !json.Valid(v) {
		o.bad = true
		return
	}
	o.b = append(o.b, key...)
	o.b = append(o.b, v...)
}

// Time appends key and t in RFC 3339 with nanoseconds, omitted when t is
// zero (omitzero). A year encoding/json refuses marks the object bad.
func (o *Object) Time(key string, t time.Time) {
	if t.IsZero() {
		return
	}
	if y := t.Year(); y < 0 || y > 9999 {
		o.bad = true
		return
	}
	o.b = append(o.b, key...)
	o.b = append(o.b, '"')
	o.b = t.AppendFormat(o.b, time.RFC3339Nano)
	o.b = append(o.b, '"')
}

// Open appends a nested object's key and its opening brace, e.g.
// `,"error":{`; Close appends a closing brace.
func (o *Object) Open(keyAndBrace string) { o.b = append(o.b, keyAndBrace...) }

// Close appends a closing brace.
func (o *Object) Close() { o.b = append(o.b, '}') }

// End closes the object and returns it, or false when a member could not be
// written as encoding/json would (the caller then uses encoding/json).
func (o *Object) End() ([]byte, bool) {
	if o.bad {
		return nil, false
	}
	return append(o.b, '}'), true
}
