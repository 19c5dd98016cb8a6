package crdt_test

import (
	"bytes"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// TestReadAppKeys: each key of an app retires at the soonest end of the graces of the
// keys added after it, whatever order the record's writes merged in; a malformed key
// field (a peer's bytes) is left out.
func TestReadAppKeys(t *testing.T) {
	base := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration, node crdt.NodeID) crdt.Timestamp {
		return crdt.Timestamp{Wall: base.Add(d).UnixNano(), Node: node}
	}
	hash := func(b byte) []byte { return bytes.Repeat([]byte{b}, crdt.AppKeyHashSize) }
	writes := []crdt.Map{
		crdt.NewApp(hash(0), at(0, 1)),
		crdt.RotateApp("aa", hash(1), 48*time.Hour, at(time.Hour, 1)),
		crdt.RotateApp("bb", hash(2), time.Hour, at(2*time.Hour, 2)), // concurrent with aa on node 2, say
		crdt.RotateApp("cc", hash(3), 30*24*time.Hour, at(3*time.Hour, 1)),
	}
	var bad crdt.Map
	bad.Claim(crdt.FieldAppKeyPrefix+"dd", []byte("short"), at(4*time.Hour, 1))
	writes = append(writes, bad)
	want := map[string]time.Time{
		"0":  base.Add(3 * time.Hour), // bb's: 2h+1h, before aa's 1h+48h and cc's
		"aa": base.Add(3 * time.Hour),
		"bb": base.Add(3*time.Hour + 30*24*time.Hour),
		"cc": {},
	}
	rapid.Check(t, func(t *rapid.T) {
		var m crdt.Map
		for _, i := range rapid.Permutation([]int{0, 1, 2, 3, 4}).Draw(t, "order") {
			m.Merge(writes[i])
		}
		a := crdt.ReadApp("shop", &m)
		if len(a.Keys) != len(want) {
			t.Fatalf("keys %+v, want %d (the malformed one left out)", a.Keys, len(want))
		}
		for i, k := range a.Keys {
			if i > 0 && !a.Keys[i-1].Created.Less(k.Created) {
				t.Fatalf("keys not oldest first: %+v", a.Keys)
			}
			if w, ok := want[k.ID]; !ok || !k.Retires.Equal(w) {
				t.Errorf("key %s retires %v, want %v", k.ID, k.Retires, w)
			}
			if len(k.Hash) != crdt.AppKeyHashSize {
				t.Errorf("key %s hash of %d bytes", k.ID, len(k.Hash))
			}
		}
	})
}

// TestAppEnds: ending an app's sessions at wall 100 with a window of 50 ends what was
// created up to 100 in HLC order, and what a node created concurrently (it had not seen
// the end) stamped up to 150; never a session whose node had seen it, nor one of an app
// whose sessions were never ended. Two ends merge to the later, whatever the order.
func TestAppEnds(t *testing.T) {
	const window = 50 * time.Nanosecond
	until := crdt.Timestamp{Wall: 100, Node: 1}
	session := func(app string, created, seen crdt.Timestamp) crdt.Session {
		m := crdt.NewSession("u", time.Unix(0, 1000), time.Hour, created)
		m.Merge(crdt.SessionApp(app, seen, false, created))
		return crdt.ReadSessionMeta("s", &m)
	}
	var ended crdt.Map
	ended.Merge(crdt.EndAppSessions(crdt.Timestamp{Wall: 40, Node: 2}, window)) // an earlier end
	ended.Merge(crdt.EndAppSessions(until, window))
	app := crdt.ReadAppSessionsEnd("shop", &ended)
	if app.SessionsUntil != until || crdt.ReadApp("shop", &ended).SessionsUntil != until {
		t.Fatalf("SessionsUntil %v, want the later end %v", app.SessionsUntil, until)
	}
	for _, tc := range []struct {
		name           string
		created, seen  crdt.Timestamp
		want, wantNone bool
	}{
		{"before", crdt.Timestamp{Wall: 60, Node: 3}, crdt.Timestamp{}, true, false},
		{"at the end itself", until, crdt.Timestamp{}, true, false},
		{"concurrent, in the window", crdt.Timestamp{Wall: 140, Node: 3}, crdt.Timestamp{Wall: 40, Node: 2}, true, false},
		{"concurrent, past the window", crdt.Timestamp{Wall: 151, Node: 3}, crdt.Timestamp{}, false, false},
		{"after its node saw the end", crdt.Timestamp{Wall: 101, Node: 3}, until, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := session("shop", tc.created, tc.seen)
			if s.AppSeenUntil != tc.seen {
				t.Fatalf("AppSeenUntil %v, want %v", s.AppSeenUntil, tc.seen)
			}
			if got := app.Ends(s); got != tc.want {
				t.Errorf("Ends=%v, want %v", got, tc.want)
			}
			var none crdt.Map
			if got := crdt.ReadAppSessionsEnd("shop", &none).Ends(s); got != tc.wantNone {
				t.Errorf("an app never ended: Ends=%v", got)
			}
		})
	}
	rapid.Check(t, func(t *rapid.T) {
		ends := []crdt.Map{
			crdt.EndAppSessions(crdt.Timestamp{Wall: 40, Node: 2}, window),
			crdt.EndAppSessions(until, window),
			crdt.RevokeApp(crdt.Timestamp{Wall: 70, Node: 2}),
		}
		var m crdt.Map
		for _, i := range rapid.Permutation([]int{0, 1, 2}).Draw(t, "order") {
			m.Merge(ends[i])
		}
		if a := crdt.ReadApp("shop", &m); a.SessionsUntil != until || a.SessionsWindow != until.Wall+int64(window) {
			t.Fatalf("merged end %v/%d, want %v/%d", a.SessionsUntil, a.SessionsWindow, until, until.Wall+int64(window))
		}
	})
}

// TestAppQuota: an app's own quota is the latest one set, a clear after it leaves the
// nodes' own, whatever order the writes merged in; a malformed value (a peer's bytes)
// counts as none.
func TestAppQuota(t *testing.T) {
	at := func(wall int64) crdt.Timestamp { return crdt.Timestamp{Wall: wall, Node: 1} }
	var m crdt.Map
	if _, ok := crdt.ReadAppQuota(&m); ok {
		t.Errorf("a record without a quota has one")
	}
	for _, tc := range []struct {
		name   string
		writes []crdt.Map
		want   int64
		set    bool
	}{
		{"Set", []crdt.Map{crdt.SetAppQuota(5<<20, at(1))}, 5 << 20, true},
		{"NoBound", []crdt.Map{crdt.SetAppQuota(-1, at(1))}, -1, true},
		{"LaterWins", []crdt.Map{crdt.SetAppQuota(5<<20, at(1)), crdt.SetAppQuota(7<<20, at(2))}, 7 << 20, true},
		{"Cleared", []crdt.Map{crdt.SetAppQuota(5<<20, at(1)), crdt.ClearAppQuota(at(2))}, 0, false},
		{"SetAfterClear", []crdt.Map{crdt.ClearAppQuota(at(1)), crdt.SetAppQuota(3, at(2))}, 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rapid.Check(t, func(rt *rapid.T) {
				var m crdt.Map
				for _, i := range rapid.Permutation([]int{0, 1}[:len(tc.writes)]).Draw(rt, "order") {
					m.Merge(tc.writes[i])
				}
				got, set := crdt.ReadAppQuota(&m)
				if got != tc.want || set != tc.set {
					rt.Fatalf("quota %d (set %v), want %d (%v)", got, set, tc.want, tc.set)
				}
				if a := crdt.ReadApp("shop", &m); a.Quota != got || a.HasQuota != set {
					rt.Fatalf("ReadApp quota %d (%v), ReadAppQuota %d (%v)", a.Quota, a.HasQuota, got, set)
				}
			})
		})
	}
	var bad crdt.Map
	bad.Set(crdt.FieldAppQuota, []byte("short"), at(1))
	if _, ok := crdt.ReadAppQuota(&bad); ok {
		t.Errorf("a malformed quota counts")
	}
}
