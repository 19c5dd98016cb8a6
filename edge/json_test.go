package edge

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
)

// marshalDoc is the reference: what c.JSON(fiber.Map{key: v}) sends.
func marshalDoc(key string, v any) ([]byte, error) {
	return json.Marshal(fiber.Map{key: v})
}

// TestAppendSession_MatchesEncodingJSON checks on random sessions — keys, ids and names
// of random Unicode with invalid UTF-8, control and HTML-significant characters; random
// JSON values with random whitespace; times in many zones — that the appenders write the
// bytes encoding/json writes.
func TestAppendSession_MatchesEncodingJSON(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := testingSeed(); s != 0 {
		seed = s
	}
	t.Logf("seed %d (rerun with SESSIOND_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, seed>>32|1))
	for i := range 3000 {
		s := randSession(r)
		want, err := marshalDoc("session", s)
		if err != nil {
			t.Fatalf("case %d: json.Marshal: %v", i, err)
		}
		got, err := appendSessionDoc([]byte("junk"), s)
		if err != nil {
			t.Fatalf("case %d: appendSessionDoc: %v", i, err)
		}
		if got = got[len("junk"):]; !bytes.Equal(got, want) {
			t.Fatalf("case %d: appendSessionDoc(%#v)\n got %s\nwant %s", i, s, got, want)
		}
	}
	for i := range 500 {
		var ss []functions.Session
		if r.IntN(10) > 0 {
			ss = []functions.Session{}
			for range r.IntN(4) {
				ss = append(ss, randSession(r))
			}
		}
		want, err := marshalDoc("sessions", ss)
		if err != nil {
			t.Fatalf("list %d: json.Marshal: %v", i, err)
		}
		got, err := appendSessionsDoc(nil, ss)
		if err != nil {
			t.Fatalf("list %d: appendSessionsDoc: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("list %d: appendSessionsDoc\n got %s\nwant %s", i, got, want)
		}
	}
}

func testingSeed() uint64 {
	s, _ := strconv.ParseUint(strings.TrimSpace(os.Getenv("SESSIOND_SEED")), 10, 64)
	return s
}

// TestAppendSession_Errors checks that the appenders fail where json.Marshal does: a time
// RFC 3339 cannot show, or a data value that is not JSON (never stored: PatchData refuses
// it).
func TestAppendSession_Errors(t *testing.T) {
	ok := functions.Session{ID: "s", Data: map[string]json.RawMessage{"k": json.RawMessage(`1`)}}
	for _, tc := range []struct {
		name string
		edit func(*functions.Session)
	}{
		{"ErrYear10000", func(s *functions.Session) { s.ExpiresAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"ErrYearNegative", func(s *functions.Session) { s.CreatedAt = time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{"ErrZoneOffset", func(s *functions.Session) {
			s.LastUsedAt = time.Date(2025, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600))
		}},
		{"ErrEmptyValue", func(s *functions.Session) { s.Data["e"] = json.RawMessage{} }},
		{"ErrTruncatedValue", func(s *functions.Session) { s.Data["e"] = json.RawMessage(`{"a":`) }},
		{"ErrTwoValues", func(s *functions.Session) { s.Data["e"] = json.RawMessage(`1 2`) }},
		{"ErrBareWord", func(s *functions.Session) { s.Data["e"] = json.RawMessage(`<b>`) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			s.Data = map[string]json.RawMessage{"k": json.RawMessage(`1`)}
			tc.edit(&s)
			if _, err := marshalDoc("session", s); err == nil {
				t.Fatalf("json.Marshal succeeded; the case is wrong")
			}
			if b, err := appendSessionDoc(nil, s); err == nil {
				t.Errorf("appendSessionDoc = %s, want an error", b)
			}
			if b, err := appendSessionsDoc(nil, []functions.Session{ok, s}); err == nil {
				t.Errorf("appendSessionsDoc = %s, want an error", b)
			}
		})
	}
}

// TestAppendSession_Fields fails when functions.Session gains, loses or renames a field,
// which appendSession must then follow (a new omitempty field left zero would slip past
// the comparison with encoding/json).
func TestAppendSession_Fields(t *testing.T) {
	var got []string
	st := reflect.TypeFor[functions.Session]()
	for i := range st.NumField() {
		got = append(got, st.Field(i).Name+" "+st.Field(i).Type.String()+" "+st.Field(i).Tag.Get("json"))
	}
	want := []string{
		"ID string id", "UserID string user_id", "Username string username",
		"CreatedAt time.Time created_at", "LastUsedAt time.Time last_used_at",
		"ExpiresAt time.Time expires_at", "IdleExpiresAt time.Time idle_expires_at",
		"Data map[string]json.RawMessage data", "Current bool current,omitempty",
		"Device string device,omitempty", "ClientAddress string client_address,omitempty",
		"Region string region,omitempty", "Node string node,omitempty",
		"Subject string subject,omitempty",
	}
	if !slices.Equal(got, want) {
		t.Errorf("functions.Session fields = %q,\nwant %q: update appendSession", got, want)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "alice", `"\`, "<script>&amp;</script>", "\x00\x01\b\f\n\r\t\x1f\x7f",
		"é世😀", "\u2028\u2029", "\xff", "a\xc3", "\xe2\x80", "\xed\xa0\x80", "\ufffd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("appendJSONString(%q) = %s, want %s", s, got, want)
		}
	})
}

func FuzzAppendRawJSON(f *testing.F) {
	for _, s := range []string{"", "1", " 1 ", "null", `"<a href='x'>&</a>"`, "\"\u2028\u2029\"",
		"{ \"a\" : [ 1 , 2.5e-3 , true , \"x\\\"y\" ] }", `"\\"`, `"\""`, "\"\xff\"", "[", "1 2", "<",
		"\"\xe2\x80\"", "\t\r\n[]\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		want, werr := json.Marshal(json.RawMessage(v))
		got, gerr := appendRawJSON(nil, v)
		switch {
		case (werr == nil) != (gerr == nil):
			t.Fatalf("appendRawJSON(%q): error %v, json.Marshal error %v", v, gerr, werr)
		case werr == nil && !bytes.Equal(got, want):
			t.Errorf("appendRawJSON(%q) = %s, want %s", v, got, want)
		}
	})
}

// TestHTTP_SessionJSON checks the wire: the session routes send what encoding/json would,
// with Content-Type application/json.
func TestHTTP_SessionJSON(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "json-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	check := func(resp *http.Response, body []byte, key string, v any) {
		t.Helper()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if ct := resp.Header.Get("Content-Type"); ct != fiber.MIMEApplicationJSON {
			t.Errorf("Content-Type = %q, want %q", ct, fiber.MIMEApplicationJSON)
		}
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(body, want) {
			t.Errorf("body\n got %s\nwant %s", body, want)
		}
	}
	var one struct {
		Session functions.Session `json:"session"`
	}
	resp, body := c.do("PATCH", "/v1/sessions/current", tok,
		"{\"data\":{\"html\": \"<b>&amp;</b>\", \"ls\": \"\u2028\u2029\", \"k<&>\\u00e9\": [1, {\"a\": null}], \"n\": 12.50}}")
	check(resp, body, "session", &one)
	if len(one.Session.Data) != 4 {
		t.Errorf("data = %s, want 4 keys", body)
	}
	resp, body = c.do("GET", "/v1/sessions/current", tok, nil)
	check(resp, body, "session", &one)
	var list struct {
		Sessions []functions.Session `json:"sessions"`
	}
	resp, body = c.do("GET", "/v1/sessions", tok, nil)
	check(resp, body, "sessions", &list)
	if len(list.Sessions) != 1 || !list.Sessions[0].Current {
		t.Errorf("sessions = %s, want the one current session", body)
	}
}

func randSession(r *rand.Rand) functions.Session {
	s := functions.Session{
		ID: randString(r, 40), UserID: randString(r, 40), Username: randString(r, 40),
		CreatedAt: randTime(r), LastUsedAt: randTime(r), ExpiresAt: randTime(r), IdleExpiresAt: randTime(r),
		Current: r.IntN(2) == 0,
	}
	for _, f := range []*string{&s.Device, &s.ClientAddress, &s.Region, &s.Node, &s.Subject} {
		if r.IntN(3) > 0 {
			*f = randString(r, 20)
		}
	}
	if r.IntN(20) > 0 {
		s.Data = make(map[string]json.RawMessage)
		for range r.IntN([]int{3, 10, 50}[r.IntN(3)]) {
			s.Data[randString(r, 16)] = randRawJSON(r, 3)
		}
	}
	return s
}

// randPieces are the pieces random strings are made of: plain and HTML-significant ASCII,
// every kind of escaped byte, multi-byte runes, the JavaScript line terminators, U+FFFD,
// and invalid UTF-8 (a stray continuation byte, a truncated sequence, a truncated U+2028,
// an encoded surrogate, an over-long encoding).
var randPieces = []string{
	"a", "Z", "0", " ", "_", "-", "/", "'", "<", ">", "&", `"`, `\`, "\x00", "\x01", "\b", "\f", "\n",
	"\r", "\t", "\x1f", "\x7f", "é", "ß", "世", "😀", "\u0085", "\u2028", "\u2029", "\ufffd", "\ufeff",
	"\xff", "\x80", "\xc3", "\xe2\x80", "\xed\xa0\x80", "\xc0\xaf",
}

func randString(r *rand.Rand, max int) string {
	var b strings.Builder
	for range r.IntN(max + 1) {
		b.WriteString(randPieces[r.IntN(len(randPieces))])
	}
	return b.String()
}

var randZones = []*time.Location{
	time.UTC, time.FixedZone("", 0), time.FixedZone("IST", 5*3600+1800), time.FixedZone("", -8*3600),
	time.FixedZone("", 23*3600+59*60), time.FixedZone("", -(23*3600 + 59*60)), time.FixedZone("odd", 3600+17),
}

func randTime(r *rand.Rand) time.Time {
	switch r.IntN(6) {
	case 0:
		return time.Time{}
	case 1: // the extremes RFC 3339 can show
		return time.Date([]int{0, 9999}[r.IntN(2)], time.Month(1+r.IntN(12)), 1+r.IntN(28), r.IntN(24), r.IntN(60), r.IntN(60), r.IntN(1e9), time.UTC)
	}
	t := time.Unix(r.Int64N(4e9), 0)
	switch r.IntN(3) {
	case 0:
		t = t.Add(time.Duration(r.IntN(1e9)))
	case 1:
		t = t.Add(time.Duration(r.IntN(1000)) * time.Millisecond)
	}
	return t.In(randZones[r.IntN(len(randZones))])
}

// randRawJSON returns a valid JSON value with random insignificant whitespace.
func randRawJSON(r *rand.Rand, depth int) json.RawMessage {
	var b []byte
	b = appendRandJSON(r, b, depth)
	if r.IntN(4) == 0 {
		b = append(append(randSpace(r, nil), b...), randSpace(r, nil)...)
	}
	return b
}

func randSpace(r *rand.Rand, b []byte) []byte {
	for range r.IntN(3) {
		b = append(b, " \t\n\r"[r.IntN(4)])
	}
	return b
}

func appendRandJSON(r *rand.Rand, b []byte, depth int) []byte {
	k := r.IntN(7)
	if depth == 0 {
		k = r.IntN(5)
	}
	switch k {
	case 0:
		return append(b, []string{"null", "true", "false"}[r.IntN(3)]...)
	case 1:
		return append(b, []string{"0", "-1", "12.50", "1e-7", "-0.0E+3", "123456789012345678901234567890"}[r.IntN(6)]...)
	case 2, 3, 4:
		return appendRandJSONString(r, b)
	case 5:
		b = append(b, '[')
		for i := range r.IntN(4) {
			if i > 0 {
				b = append(randSpace(r, b), ',')
			}
			b = appendRandJSON(r, randSpace(r, b), depth-1)
		}
		return append(randSpace(r, b), ']')
	default:
		b = append(b, '{')
		for i := range r.IntN(4) {
			if i > 0 {
				b = append(randSpace(r, b), ',')
			}
			b = appendRandJSONString(r, randSpace(r, b))
			b = append(randSpace(r, b), ':')
			b = appendRandJSON(r, randSpace(r, b), depth-1)
		}
		return append(randSpace(r, b), '}')
	}
}

// appendRandJSONString appends a JSON string holding random pieces, raw or escaped, as a
// client may send them (invalid UTF-8 included: the JSON grammar allows it).
func appendRandJSONString(r *rand.Rand, b []byte) []byte {
	b = append(b, '"')
	for range r.IntN(12) {
		p := randPieces[r.IntN(len(randPieces))]
		switch {
		case p == `"` || p == `\`:
			b = append(b, '\\', p[0])
		case len(p) == 1 && p[0] < 0x20:
			b = fmt.Appendf(b, `\u%04x`, p[0])
		case r.IntN(4) == 0 && p == "\u2028":
			b = append(b, `\u2028`...)
		case r.IntN(4) == 0:
			b = append(b, []string{`\n`, `\/`, `\ud83d\ude00`, `\u003c`, `\\`}[r.IntN(5)]...)
		default:
			b = append(b, p...)
		}
	}
	return append(b, '"')
}

// benchSessions are a session as the HTTP benchmark's (one small data key) and one with
// more data.
func benchSessions() map[string]functions.Session {
	now := time.Date(2025, 6, 1, 12, 0, 0, 123456789, time.UTC)
	small := functions.Session{
		ID: "9ab1c2d3e4f5061728394a5b6c7d8e9f", UserID: "5f0c1d2e3f405162738495a6b7c8d9e0", Username: "bench",
		CreatedAt: now, LastUsedAt: now.Add(time.Minute), ExpiresAt: now.Add(24 * time.Hour), IdleExpiresAt: now.Add(2 * time.Hour),
		Data: map[string]json.RawMessage{"n": json.RawMessage(`123456`)},
	}
	large := small
	large.Data = make(map[string]json.RawMessage)
	for i := range 20 {
		large.Data[fmt.Sprintf("key-%02d", i)] = json.RawMessage(fmt.Sprintf(`{"theme":"dark","cart":[%d,2,3],"note":"a <b> & c"}`, i))
	}
	return map[string]functions.Session{"small": small, "20keys": large}
}

func BenchmarkSessionJSON(b *testing.B) {
	for name, s := range benchSessions() {
		b.Run(name+"/appender", func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				var err error
				if buf, err = appendSessionDoc(buf[:0], s); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/encoding_json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := json.Marshal(fiber.Map{"session": s}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestCompactJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`1`, `1`},
		{`"a b"`, `"a b"`},
		{`[1, 2]`, `[1,2]`},
		{"{\n\t\"a\" : \"x y\"\r\n}", `{"a":"x y"}`},
		{`{"a":[true,null]}`, `{"a":[true,null]}`},
	} {
		if got := compactJSON(json.RawMessage(tc.in)); string(got) != tc.want {
			t.Errorf("compactJSON(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestHTTP_CurrentSessionMemo: GET /v1/sessions/current answers a record state it answered
// before with the bytes it kept (crdt.Map.SetMemo) — the same as a fresh encoding — and
// stops doing so once the record changes: a patch, a renewal, an expiry's touch.
func TestHTTP_CurrentSessionMemo(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "memo-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	get := func() []byte {
		t.Helper()
		resp, body := c.do("GET", "/v1/sessions/current", tok, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("GET: status %d: %s", resp.StatusCode, body)
		}
		return body
	}
	var ids struct {
		Session struct {
			ID     string `json:"id"`
			UserID string `json:"user_id"`
		} `json:"session"`
	}
	fresh := func() []byte { // what encoding the state afresh gives
		t.Helper()
		p, err := n.sessions.Authenticate(context.Background(), ids.Session.UserID, ids.Session.ID)
		if err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		s, err := n.sessions.Current(context.Background(), p)
		if err != nil {
			t.Fatalf("Current: %v", err)
		}
		b, err := appendSessionDoc(nil, s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := get()
	if err := json.Unmarshal(first, &ids); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if again := get(); !bytes.Equal(again, first) {
			t.Fatalf("GET %d:\n got %s\nwant %s", i+2, again, first)
		}
	}
	if want := fresh(); !bytes.Equal(first, want) {
		t.Fatalf("kept encoding\n got %s\nwant %s", first, want)
	}
	for _, v := range []string{`1`, `{"a":[2]}`} {
		resp, body := c.do("PATCH", "/v1/sessions/current", tok, `{"data":{"k":`+v+`}}`)
		if resp.StatusCode != 200 {
			t.Fatalf("PATCH: status %d: %s", resp.StatusCode, body)
		}
		got := get()
		if !bytes.Contains(got, []byte(`"k":`+v)) || !bytes.Equal(got, fresh()) {
			t.Fatalf("GET after PATCH k=%s: %s, want the patched state %s", v, got, fresh())
		}
		if again := get(); !bytes.Equal(again, got) {
			t.Fatalf("GET again after PATCH:\n got %s\nwant %s", again, got)
		}
	}
}
