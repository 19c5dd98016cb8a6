package ijson

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		v  string
		ok bool
	}{
		{`1`, true}, {`"a"`, true}, {`[1,2,{"a":1}]`, true}, {`{"a":1,"b":{"a":2}}`, true},
		{`{"a":{"x":1},"b":{"x":2}}`, true}, {`[{"a":1},{"a":1}]`, true}, {`{}`, true}, {`[]`, true},
		{`1e308`, true}, {`-1.5E-300`, true}, {`"\u00e9\ud83d\ude00"`, true}, {`"\\ud800"`, true},
		{`{"a":[],"b":{},"c":"\"}"}`, true}, {`"e"`, true},
		{`{"a":1,"a":2}`, false}, {`{"r":{"a":"user","a":"admin"}}`, false}, {`[{"x":1,"x":1}]`, false},
		{`{"a":{},"a":[]}`, false}, {`{"a":[1,{"b":2}],"a":3}`, false},
		{`1e999999`, false}, {strings.Repeat("9", 400), false}, {"[" + strings.Repeat("9", 400) + "]", false}, {strings.Repeat("9", 300), true}, {`[-1e309]`, false}, {`{"n":1e400}`, false},
		{`"\ud800"`, false}, {`"\udc00"`, false}, {`"\ud800\u0041"`, false}, {`{"\ud800":1}`, false}, {`"\ud800x"`, false},
		{`{"a":1`, false}, {``, false}, {`1 2`, false}, {"{\"\xff\":1,\"\xfe\":2}", false}, {"\"\xff\"", false},
	} {
		err := Check([]byte(tc.v))
		if (err == nil) != tc.ok {
			t.Errorf("Check(%s) = %v, want ok %v", tc.v, err, tc.ok)
		}
	}
	// Deep nesting stays linear.
	deep := strings.Repeat(`{"a":`, 1000) + "1" + strings.Repeat("}", 1000)
	if err := Check([]byte(deep)); err != nil {
		t.Errorf("deep object: %v", err)
	}
}

// BenchmarkCheckIJSON: a 16 KiB value of small objects, the worst a session's data value
// holds; linear, and without allocations.
func BenchmarkCheck(b *testing.B) {
	v := []byte("[" + strings.Repeat(`{"a":0},`, 2047) + `{"a":0}]`)
	b.ReportAllocs()
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		if err := Check(v); err != nil {
			b.Fatal(err)
		}
	}
}
