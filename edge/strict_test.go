package edge

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"
)

// TestHTTP_Strict checks what the API refuses that a lenient server would take: paths in
// another case, bodies that are not application/json, field names in another case, big
// header blocks; and the one leniency HTTP asks for: the auth scheme in any case.
func TestHTTP_Strict(t *testing.T) {
	t.Parallel()
	n := MustStartNode(t, testConfig(t, "strict-0"))
	c := newTestClient(t, n)
	tok := signUp(t, c, "alice")
	login := `{"username":"alice","password":"correct horse"}`

	t.Run("ErrPathCase", func(t *testing.T) {
		for _, tc := range []struct{ method, path, token, body string }{
			{"GET", "/V1/USERS/ME", tok, ""},
			{"GET", "/v1/Users/me", tok, ""},
			{"GET", "/v1/users/me/", tok, ""},
			{"POST", "/V1/SESSIONS", "", login},
			{"GET", "/HEALTHZ", "", ""},
		} {
			var body any
			if tc.body != "" {
				body = tc.body
			}
			resp, b := c.do(tc.method, tc.path, tc.token, body)
			wantError(t, resp, b, http.StatusNotFound, "not_found")
			if strings.Contains(string(b), "token") {
				t.Errorf("%s %s handed out a token: %s", tc.method, tc.path, b)
			}
		}
	})
	t.Run("ErrDirectory", func(t *testing.T) {
		for _, p := range []string{"/js/", "/js"} {
			resp, b := c.do("GET", p, "", nil)
			wantError(t, resp, b, http.StatusNotFound, "not_found")
		}
	})
	t.Run("ContentType", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path, token, body, ct string
			status                              int
		}{
			{"ErrTextPlain", "POST", "/v1/sessions", "", login, "text/plain", 415},
			{"ErrForm", "POST", "/v1/sessions", "", "username=alice&password=correct+horse", "application/x-www-form-urlencoded", 415},
			{"ErrMultipart", "POST", "/v1/users", "", `{"username":"bob","password":"correct horse"}`, "multipart/form-data; boundary=x", 415},
			{"ErrNone", "POST", "/v1/sessions", "", login, "", 415},
			{"ErrJSONish", "POST", "/v1/sessions", "", login, "application/jsonp", 415},
			{"ErrPatchText", "PATCH", "/v1/sessions/current", tok, `{"data":{"a":1}}`, "text/plain;charset=utf-8", 415},
			{"ErrProfileText", "PATCH", "/v1/users/me", tok, `{"profile":{"first_name":"A"}}`, "text/plain", 415},
			{"ErrMessageText", "POST", "/v1/messages", tok, `{"to":"alice","body":"x"}`, "text/plain", 415},
			{"OKCharset", "POST", "/v1/sessions", "", login, "application/json; charset=utf-8", 201},
			{"OKCase", "POST", "/v1/sessions", "", login, "Application/JSON", 201},
			{"OKPatch", "PATCH", "/v1/sessions/current", tok, `{"data":{"Theme":"dark"}}`, "application/json;charset=UTF-8", 200},
			{"ErrNull", "POST", "/v1/sessions", "", "null", "application/json", 400},
			{"ErrArray", "POST", "/v1/users", "", " [] ", "application/json", 400},
			// Only JSON's white space around the object: encoding/json refuses the others.
			{"ErrTrailingNBSP", "POST", "/v1/sessions", "", login + "\u00a0", "application/json", 400},
			{"ErrLeadingNEL", "POST", "/v1/sessions", "", "\u0085" + login, "application/json", 400},
			{"OKJSONSpace", "POST", "/v1/sessions", "", " \t\r\n" + login + "\n ", "application/json", 201},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := c.do(tc.method, tc.path, tc.token, tc.body, "Content-Type", tc.ct)
				if tc.status == 400 {
					wantError(t, resp, b, 400, "invalid_argument")
				} else if tc.status == 415 {
					wantError(t, resp, b, 415, "unsupported_media_type")
				} else if resp.StatusCode != tc.status {
					t.Errorf("status = %d, want %d (%s)", resp.StatusCode, tc.status, b)
				}
			})
		}
	})
	t.Run("FieldNames", func(t *testing.T) {
		for _, tc := range []struct {
			name, method, path, token, body string
			status                          int
		}{
			{"ErrUpperCase", "POST", "/v1/sessions", "", `{"USERNAME":"alice","PASSWORD":"correct horse"}`, 400},
			{"ErrMixedCase", "POST", "/v1/sessions", "", `{"Username":"alice","password":"correct horse"}`, 400},
			{"ErrFolded", "POST", "/v1/sessions", "", `{"uſername":"alice","password":"correct horse"}`, 400},
			{"ErrDuplicate", "POST", "/v1/sessions", "", `{"username":"bob","username":"alice","password":"correct horse"}`, 400},
			{"ErrNestedCase", "POST", "/v1/users", "", `{"username":"carol","password":"correct horse","profile":{"First_Name":"C"}}`, 400},
			{"ErrPatchCase", "PATCH", "/v1/users/me", tok, `{"PROFILE":{"first_name":"A"}}`, 400},
			{"ErrPatchNestedCase", "PATCH", "/v1/users/me", tok, `{"profile":{"Email":"a@b.c"}}`, 400},
			{"ErrMessageCase", "POST", "/v1/messages", tok, `{"TO":"alice","body":"x"}`, 400},
			{"OKEscaped", "POST", "/v1/sessions", "", `{"user\u006eame":"alice","password":"correct horse"}`, 201},
			{"OKDataKeysAnyCase", "PATCH", "/v1/sessions/current", tok, `{"data":{"Theme":"dark","THEME":{"Nested":[{"X":1}]}}}`, 200},
			// Stored values are I-JSON (RFC 7493), at every depth, so that every reader
			// of them sees the same value.
			{"ErrDataKeyTwice", "PATCH", "/v1/sessions/current", tok, `{"data":{"a":1,"a":2}}`, 400},
			{"ErrDataKeyTwiceEscaped", "PATCH", "/v1/sessions/current", tok, `{"data":{"a":1,"\u0061":2}}`, 400},
			{"ErrNestedTwice", "PATCH", "/v1/sessions/current", tok, `{"data":{"role":{"a":"user","a":"admin"}}}`, 400},
			{"ErrDeepTwice", "PATCH", "/v1/sessions/current", tok, `{"data":{"x":[1,{"y":{"b":1,"c":2,"b":3}}]}}`, 400},
			{"ErrManyTwice", "PATCH", "/v1/sessions/current", tok, `{"data":{"m":{` + manyNames(40) + `,"n7":0}}}`, 400},
			{"ErrHugeNumber", "PATCH", "/v1/sessions/current", tok, `{"data":{"n":1e999999}}`, 400},
			{"ErrLongNumber", "PATCH", "/v1/sessions/current", tok, `{"data":{"n":[` + strings.Repeat("9", 400) + `]}}`, 400},
			{"ErrLoneSurrogate", "PATCH", "/v1/sessions/current", tok, `{"data":{"s":"\ud800"}}`, 400},
			{"ErrLoneSurrogateKey", "PATCH", "/v1/sessions/current", tok, `{"data":{"\udc00":1}}`, 400},
			{"ErrFormatCharKey", "PATCH", "/v1/sessions/current", tok, `{"data":{"a\u200bb":1}}`, 400},
			{"OKJoinersAndSpaces", "PATCH", "/v1/sessions/current", tok, `{"data":{"👩\u200d💻":1,"ن\u200cم":2,"a\u00a0b":3}}`, 200},
			{"OKSameNamesApart", "PATCH", "/v1/sessions/current", tok, `{"data":{"p":{"a":1,"b":{"a":2}},"q":[{"a":1},{"a":1}],"big":1e308,"t":true,"pair":"\ud83d\ude00","m":{` + manyNames(40) + `}}}`, 200},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := c.do(tc.method, tc.path, tc.token, tc.body)
				if tc.status == 400 {
					wantError(t, resp, b, 400, "invalid_argument")
				} else if resp.StatusCode != tc.status {
					t.Errorf("status = %d, want %d (%s)", resp.StatusCode, tc.status, b)
				}
			})
		}
		// Nothing of a refused registration is stored: carol can register properly.
		resp, b := c.do("POST", "/v1/users", "", `{"username":"carol","password":"correct horse"}`)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("register carol: %d %s", resp.StatusCode, b)
		}
	})
	t.Run("BearerCase", func(t *testing.T) {
		for _, scheme := range []string{"Bearer", "bearer", "BEARER", "bEaReR"} {
			resp, b := c.do("GET", "/v1/users/me", "", nil, "Authorization", scheme+" "+tok)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("scheme %q: status %d (%s), want 200", scheme, resp.StatusCode, b)
			}
		}
	})
	t.Run("ErrHeaderTooLarge", func(t *testing.T) {
		for _, tc := range []struct{ name, header string }{
			{"Token", "Authorization: Bearer " + strings.Repeat("a", 10<<10)},
			{"Many", strings.Repeat("X-Filler: "+strings.Repeat("b", 100)+"\r\n", 100) + "X-Last: 1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				resp, b := rawRequest(t, n.HTTPAddr(), "GET /v1/sessions/current HTTP/1.1\r\nHost: x\r\n"+tc.header)
				wantError(t, resp, b, http.StatusRequestHeaderFieldsTooLarge, "header_too_large")
				if resp.Header.Get("X-Served-By") != "strict-0" {
					t.Errorf("431 without X-Served-By: %v", resp.Header)
				}
			})
		}
		// A header block within the bound is read: a long bookmark-sized header is fine.
		resp, b := c.do("GET", "/v1/users/me", tok, nil, "X-Filler", strings.Repeat("c", 4<<10))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("4 KiB header: status %d (%s), want 200", resp.StatusCode, b)
		}
	})
}

func TestCheckFieldNames(t *testing.T) {
	type inner struct {
		A string `json:"a"`
		B *int   `json:"b_b"`
	}
	type outer struct {
		X    string                     `json:"x"`
		In   *inner                     `json:"in"`
		List []inner                    `json:"list"`
		ByK  map[string]inner           `json:"by_k"`
		Data map[string]json.RawMessage `json:"data"`
		Skip string                     `json:"-"`
		Bare int
	}
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{`{}`, true},
		{` {"x":"1", "in":{"a":"2","b_b":3}, "list":[{"a":""},{"b_b":null}], "by_k":{"K":{"a":"x"}}, "data":{"X":{"A":[1,{"B":"}"}]}}, "Bare":1} `, true},
		{`{"in":null,"list":null,"by_k":{},"data":null}`, true},
		{`{"\u0078":"esc"}`, true},
		{`{"x":"a\"}\\","in":{"a":"[{\"X\":1}"}}`, true},
		{`{"X":"1"}`, false},
		{`{"bare":1}`, false},
		{`{"in":{"A":"2"}}`, false},
		{`{"in":{"b_B":1}}`, false},
		{`{"list":[{"a":""},{"A":""}]}`, false},
		{`{"by_k":{"k":{"B_B":1}}}`, false},
		{`{"x":"1","x":"2"}`, false},
		{`{"in":{"a":"1","a":"1"}}`, false},
		{`{"\u0058":"esc"}`, false},
	} {
		var v outer
		if err := json.Unmarshal([]byte(tc.body), &v); err != nil {
			t.Fatalf("%s: encoding/json: %v", tc.body, err)
		}
		err := checkFieldNames([]byte(tc.body), reflect.TypeOf(&v))
		if (err == nil) != tc.ok {
			t.Errorf("checkFieldNames(%s) = %v, want ok %v", tc.body, err, tc.ok)
		}
	}
}

// FuzzCheckFieldNames checks, on any body encoding/json decodes into a request type, that
// checkFieldNames neither panics nor disagrees with a reference: a decoding of the same body
// into generic maps, whose keys are compared with the fields' names.
func FuzzCheckFieldNames(f *testing.F) {
	type profile struct {
		FirstName *string `json:"first_name"`
		Email     *string `json:"email"`
	}
	type req struct {
		Username string                     `json:"username"`
		Profile  *profile                   `json:"profile"`
		Data     map[string]json.RawMessage `json:"data"`
	}
	for _, s := range []string{`{"username":"a"}`, `{"USERNAME":"a"}`, `{"profile":{"Email":"x"}}`,
		`{"data":{"K":[1,"]"]},"profile":null}`, `{"user\u006eame":"a","profile":{"email":"e"}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var v req
		dec := json.NewDecoder(strings.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&v) != nil || strings.TrimSpace(body[dec.InputOffset():]) != "" {
			return
		}
		got := checkFieldNames([]byte(body[:dec.InputOffset()]), reflect.TypeOf(&v)) == nil
		want := referenceNamesOK(t, body, map[string]map[string]bool{
			"": {"username": true, "profile": true, "data": true}, "profile": {"first_name": true, "email": true},
		})
		if got != want {
			t.Errorf("checkFieldNames(%q) ok = %v, reference says %v", body, got, want)
		}
	})
}

// referenceNamesOK decodes body into maps and checks each object's keys against names
// (by the path of the object: "" for the top), rejecting duplicates by counting tokens.
func referenceNamesOK(t *testing.T, body string, names map[string]map[string]bool) bool {
	dec := json.NewDecoder(strings.NewReader(body))
	var walk func(path string) bool
	walk = func(path string) bool {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("reference: %v", err)
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return true
		}
		fields, checked := names[path]
		seen := map[string]bool{}
		all := true
		for dec.More() {
			if d == '{' {
				kt, _ := dec.Token()
				k := kt.(string)
				if checked && (!fields[k] || seen[k]) {
					all = false
				}
				seen[k] = true
				sub := fmt.Sprint(path, k)
				if path != "" || !checked {
					sub = "-" // only top-level objects' fields are structs here
				}
				if !walk(sub) {
					all = false
				}
			} else if !walk("-") {
				all = false
			}
		}
		dec.Token() // the closing delimiter
		return all
	}
	return walk("")
}

// BenchmarkDecodeJSON measures decodeJSON on the bodies of the hot write routes, checks
// included (media type, field names).
//
//	go test ./edge -run='^$' -bench=BenchmarkDecodeJSON -benchmem
func BenchmarkDecodeJSON(b *testing.B) {
	app := fiber.New()
	for _, tc := range []struct {
		name, body string
		decode     func(c *fiber.Ctx) error
	}{
		{"patch", `{"data":{"n":12345}}`, func(c *fiber.Ctx) error {
			var req struct {
				Data map[string]json.RawMessage `json:"data"`
			}
			return decodeJSON(c, &req)
		}},
		{"login", `{"username":"alice","password":"correct horse"}`, func(c *fiber.Ctx) error {
			var req struct {
				Username string `json:"username"`
				Password string `json:"password"`
			}
			return decodeJSON(c, &req)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			var fctx fasthttp.RequestCtx
			fctx.Request.Header.SetMethod(fiber.MethodPost)
			fctx.Request.Header.SetContentType("application/json; charset=utf-8")
			fctx.Request.SetBodyString(tc.body)
			c := app.AcquireCtx(&fctx)
			defer app.ReleaseCtx(c)
			for b.Loop() {
				if err := tc.decode(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// manyNames returns n distinct members "n0":0,… of an object, without its braces.
func manyNames(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:0", fmt.Sprint("n", i))
	}
	return b.String()
}
