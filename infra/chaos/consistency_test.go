package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func newTestWorkload() *Workload {
	st := &nemesisState{scenario: "steady"}
	return &Workload{client: newClient(2 * time.Second), history: &History{}, model: &Model{},
		prober: newProber(nil, nil), convs: map[*User]*Conversation{},
		scenario: st.Scenario, skewed: st.Skewed, tokenAhead: st.tokenAhead}
}

func TestCheckSessionData(t *testing.T) {
	ok := func(v string) *Op { return &Op{Outcome: OK, Value: v} }
	info := &Op{Outcome: Info}
	keys := map[string]*KeyState{
		"k000": {Set: ok(`{"v":"a"}`)},
		"k001": {Set: ok(`{"v":"b"}`), Del: &Op{Outcome: OK}},
		"k002": {Set: &Op{Outcome: Info, Value: `{"v":"c"}`}, Uncertain: true},
		"k003": {Set: ok(`{"v":"d"}`), Del: info, Uncertain: true},
	}
	for _, tt := range []struct {
		name string
		data map[string]json.RawMessage
		bad  bool
	}{
		{"OK", map[string]json.RawMessage{"k000": json.RawMessage(`{"v":"a"}`)}, false},
		{"OKUnknownOutcomesEitherWay", map[string]json.RawMessage{"k000": json.RawMessage(`{"v":"a"}`), "k002": json.RawMessage(`{"v":"c"}`), "k003": json.RawMessage(`{"v":"d"}`)}, false},
		{"ErrMissingWrite", map[string]json.RawMessage{}, true},
		{"ErrOtherValue", map[string]json.RawMessage{"k000": json.RawMessage(`{"v":"z"}`)}, true},
		{"ErrDeleteUndone", map[string]json.RawMessage{"k000": json.RawMessage(`{"v":"a"}`), "k001": json.RawMessage(`{"v":"b"}`)}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newTestWorkload()
			s := &Session{ID: "s1", Keys: keys}
			op := &Op{}
			w.checkSessionData(op, s, tt.data)
			if (op.RYW != "") != tt.bad || !op.RYWChecked {
				t.Errorf("RYW=%q checked=%v, want a violation: %v", op.RYW, op.RYWChecked, tt.bad)
			}
		})
	}
}

func TestCheckProfile(t *testing.T) {
	u := &User{Initial: map[string]string{"first_name": "F0", "last_name": "L0", "email": "e0", "address": "a0"},
		Profile: map[string][]*Op{
			"first_name": {{Outcome: OK, Value: "F1"}, {Outcome: OK, Value: "F2"}},
			"last_name":  {{Outcome: Info, Value: "L1"}, {Outcome: OK, Value: "L2"}},
		}}
	for _, tt := range []struct {
		name    string
		profile map[string]string
		bad     bool
	}{
		{"OK", map[string]string{"first_name": "F2", "last_name": "L2", "email": "e0", "address": "a0"}, false},
		{"OKUnknownOutcomeLandedLater", map[string]string{"first_name": "F2", "last_name": "L1", "email": "e0", "address": "a0"}, false},
		{"ErrOlderValue", map[string]string{"first_name": "F1", "last_name": "L2", "email": "e0", "address": "a0"}, true},
		{"ErrRegistrationLost", map[string]string{"first_name": "F2", "last_name": "L2", "email": "", "address": "a0"}, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newTestWorkload()
			op := &Op{}
			w.checkProfile(op, u, tt.profile)
			if (op.RYW != "") != tt.bad {
				t.Errorf("RYW=%q, want a violation: %v", op.RYW, tt.bad)
			}
		})
	}
}

// TestDoBookmarks checks the client's side of bookmarks against a fake node: the latest
// one is kept and sent back, a response without one leaves it, a request without the
// client's bookmark neither sends nor keeps one, and 401s are judged by the session.
func TestDoBookmarks(t *testing.T) {
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get(headerBookmark))
		switch r.URL.Path {
		case "/behind":
			rw.WriteHeader(503)
			_, _ = rw.Write([]byte(`{"error":{"code":"behind","message":"x"}}`))
			return
		case "/refused":
			rw.Header().Set(headerBookmark, "B9")
			rw.WriteHeader(401)
			return
		}
		rw.Header().Set(headerBookmark, "B"+r.URL.Path[1:])
		rw.WriteHeader(200)
	}))
	defer srv.Close()
	w := newTestWorkload()
	u := &User{Name: "u"}
	live := &Session{ID: "s", Token: "t", User: u, Login: &Op{Outcome: OK}}
	ended := &Session{ID: "e", Token: "t2", User: u, Login: &Op{Outcome: OK}, Revoke: &Op{Outcome: OK}}
	tgt := Target{Name: "n", URL: srv.URL}
	ctx := context.Background()
	do := func(path string, s *Session, noBookmark bool) *Op {
		op := &Op{}
		w.do(ctx, op, call{user: u, session: s, target: tgt, method: "GET", path: path, noBookmark: noBookmark})
		return op
	}
	do("/1", live, false)
	do("/2", live, false)
	if op := do("/behind", live, false); !op.Behind || op.Outcome != Fail {
		t.Errorf("behind: Behind=%v Outcome=%q, want true, fail", op.Behind, op.Outcome)
	}
	do("/3", live, true)
	if op := do("/refused", live, false); !op.Spurious401 {
		t.Errorf("401 for a live session: Spurious401=false, want true")
	}
	if op := do("/refused", ended, false); op.Spurious401 {
		t.Errorf("401 for an ended session: Spurious401=true, want false")
	}
	want := []string{"", "B1", "B2", "", "B2", "B9"}
	for i := range want {
		if i >= len(got) || got[i] != want[i] {
			t.Fatalf("bookmarks sent=%q, want %q", got, want)
		}
	}
}

func TestTokenAhead(t *testing.T) {
	t0 := time.Now()
	st := &nemesisState{}
	st.addOffset(offsetWindow{node: "ap-2", from: t0, to: t0.Add(10 * time.Second), offset: 90 * time.Second})
	login := &Op{ServedBy: "ap-2", Invoke: t0.Add(time.Second), Ack: t0.Add(time.Second)}
	for _, tt := range []struct {
		name  string
		login *Op
		at    time.Time
		want  bool
	}{
		{"OK", login, t0.Add(30 * time.Second), true},
		{"ErrAfterIssueTime", login, t0.Add(92 * time.Second), false},
		{"ErrOtherNode", &Op{ServedBy: "ap-1", Invoke: login.Invoke, Ack: login.Ack}, t0.Add(30 * time.Second), false},
		{"ErrOutsideWindow", &Op{ServedBy: "ap-2", Invoke: t0.Add(11 * time.Second), Ack: t0.Add(11 * time.Second)}, t0.Add(30 * time.Second), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := st.tokenAhead(tt.login, tt.at); got != tt.want {
				t.Errorf("tokenAhead=%v, want %v", got, tt.want)
			}
		})
	}
}
