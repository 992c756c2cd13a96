package jsonappend

import (
	"encoding/json"
	"testing"
	"time"
)

// TestObjectMatchesEncodingJSON: what Object writes is what json.Marshal
// writes, and anything it cannot write that way marks the object bad.
func TestObjectMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	type inner struct {
		Kind string `json:"kind"`
	}
	type doc struct {
		Type  string          `json:"type"`
		ID    uint64          `json:"id,omitempty"`
		Name  string          `json:"name,omitempty"`
		N     int64           `json:"n,omitempty"`
		OK    bool            `json:"ok"`
		Flag  bool            `json:"flag,omitempty"`
		Raw   json.RawMessage `json:"raw,omitempty"`
		Err   *inner          `json:"err,omitempty"`
		At    time.Time       `json:"at,omitzero"`
		Empty string          `json:"empty"`
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC)
	for _, tc := range []struct {
		d      doc
		wantOK bool
	}{
		{doc{Type: "x"}, true},
		{doc{Type: "x", ID: 7, Name: "s-1_a", N: -3, OK: true, Flag: true, Raw: json.RawMessage(`{"a":[1,2]}`), Err: &inner{"app"}, At: at}, true},
		{doc{Type: "x", Name: `q"uote`}, false},
		{doc{Type: "x", Name: "<b>"}, false},
		{doc{Type: "x", Name: "é"}, false},
		{doc{Type: "x", Raw: json.RawMessage(`{`)}, false},
		{doc{Type: "x", At: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}, false},
	} {
		d := tc.d
		o := Start(nil, `{"type":"x"`)
		o.Uint(`,"id":`, d.ID)
		o.String(`,"name":`, d.Name, true)
		o.Int(`,"n":`, d.N)
		o.Bool(`,"ok":`, d.OK, false)
		o.Bool(`,"flag":`, d.Flag, true)
		o.Raw(`,"raw":`, d.Raw)
		if d.Err != nil {
			o.Open(`,"err":{`)
			o.String(`"kind":`, d.Err.Kind, false)
			o.Close()
		}
		o.Time(`,"at":`, d.At)
		o.String(`,"empty":`, d.Empty, false)
		got, ok := o.End()
		if ok != tc.wantOK {
			t.Errorf("%+v: ok = %v, want %v (%s)", d, ok, tc.wantOK, got)
			continue
		}
		if !ok {
			continue
		}
		want, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("Object  = %s\nMarshal = %s", got, want)
		}
	}
}
