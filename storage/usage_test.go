package storage

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// TestAppUsage: an app's usage counts its key-value records and its subjects' user and
// session records — their keys' and states' bytes — follows every write, expiry and
// reopening, and counts nothing of another app's or of a registered user's. (Every
// test's checkInvariants also compares the usage with a count from the file.)
func TestAppUsage(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	subject := crdt.SubjectID("shop", "alice")
	sess := "0abc1"
	shopKeys := []string{crdt.KVKey("shop", "cart"), crdt.UserKey(subject), crdt.SessionKey(sess)}
	merge(t, db, shopKeys[0], kvPut(db, map[string]string{"a": `"1"`}, clk.Now().Add(hour)))
	merge(t, db, shopKeys[1], crdt.NewSubject("shop", "alice", db.Clock().Next()))
	s := newSession(db, subject, 2*hour)
	s.Merge(crdt.SessionApp("shop", crdt.Timestamp{}, false, db.Clock().Next()))
	merge(t, db, shopKeys[2], s)
	merge(t, db, crdt.KVKey("blog", "cart"), kvPut(db, map[string]string{"a": `"1"`}, clk.Now().Add(hour)))
	merge(t, db, crdt.UserKey("u1"), newUser(db, "bob"))
	merge(t, db, crdt.SessionKey("s1"), newSession(db, "u1", hour))

	// want counts what db stores of keys, from their states as read back.
	want := func(db *DB, keys ...string) AppUsage {
		var u AppUsage
		for _, k := range keys {
			if m, ok := mustRecord(t, db, k); ok {
				u.Records++
				u.Bytes += int64(len(k) + len(m.AppendBinary(nil)))
			}
		}
		return u
	}
	check := func(db *DB, what string) {
		t.Helper()
		if got, w := db.AppUsage("shop"), want(db, shopKeys...); got != w {
			t.Errorf("%s: shop uses %+v, want %+v", what, got, w)
		}
		if got, w := db.AppUsage("blog"), want(db, crdt.KVKey("blog", "cart")); got != w {
			t.Errorf("%s: blog uses %+v, want %+v", what, got, w)
		}
	}
	check(db, "written")
	if u := db.AppUsage("shop"); u.Records != 3 || u.Bytes < 100 {
		t.Fatalf("shop uses %+v, want its three records", u)
	}
	if u := db.AppUsage("nobody"); u != (AppUsage{}) {
		t.Errorf("an app with nothing stored uses %+v", u)
	}

	// A write that grows a record grows the usage by as much.
	before := db.AppUsage("shop")
	merge(t, db, shopKeys[0], crdt.KVPatch(map[string][]byte{"b": []byte(`"` + strings.Repeat("x", 40) + `"`)}, nil, clk.Now().Add(hour), db.Clock().Next()))
	if after := db.AppUsage("shop"); after.Records != before.Records || after.Bytes <= before.Bytes+40 {
		t.Errorf("after a patch of 40 bytes: %+v, before %+v", after, before)
	}
	check(db, "patched")

	db = mustReopen(t, db, Options{Now: clk.Now})
	check(db, "reopened")

	// Expiry takes the key-value records away, then the session.
	clk.Add(hour)
	if _, err := db.Sweep(ctx, clk.Now()); err != nil {
		t.Fatal(err)
	}
	check(db, "an hour on")
	if u := db.AppUsage("blog"); u != (AppUsage{}) {
		t.Errorf("blog after its only key expired: %+v", u)
	}
	clk.Add(2 * hour)
	if _, err := db.Sweep(ctx, clk.Now()); err != nil {
		t.Fatal(err)
	}
	if u := db.AppUsage("shop"); u.Records != 1 {
		t.Errorf("shop after its key and session expired: %+v, want its subject's record alone", u)
	}
	check(db, "three hours on")
}

// TestAppSubjects: the app's subjects, page by page however many records a page reads,
// and no one else.
func TestAppSubjects(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	want := map[string]bool{}
	for i := range maxSubjectScan + 500 {
		app := "blog"
		if i%3 == 0 {
			app = "shop"
		}
		id := crdt.SubjectID(app, fmt.Sprint(i))
		merge(t, db, crdt.UserKey(id), crdt.NewSubject(app, fmt.Sprint(i), db.Clock().Next()))
		if app == "shop" {
			want[id] = true
		}
	}
	merge(t, db, crdt.UserKey("u1"), newUser(db, "bob"))
	got, pages, after := map[string]bool{}, 0, ""
	for {
		ids, next, err := db.AppSubjects(ctx, "shop", after)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, id := range ids {
			if got[id] {
				t.Errorf("%s twice", id)
			}
			got[id] = true
		}
		if next == "" {
			break
		}
		after = next
	}
	if !maps.Equal(got, want) || pages != 2 {
		t.Errorf("%d subjects of shop in %d pages, want %d in 2", len(got), pages, len(want))
	}
}

// TestAppEndedSessionsDropped: a session its app ended is not kept — neither the copy a
// write touches next (what ending an app's sessions does to each held one) nor one that
// arrives from a peer afterwards — so nothing of it counts against the app's quota; a
// session made after the end is kept, and another app's is untouched.
func TestAppEndedSessionsDropped(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	subject := crdt.SubjectID("shop", "alice")
	merge(t, db, crdt.UserKey(subject), crdt.NewSubject("shop", "alice", db.Clock().Next()))
	session := func(app string) crdt.Map {
		ts := db.Clock().Next()
		m := crdt.NewSession(subject, clk.Now().Add(hour), hour, ts)
		m.Merge(crdt.SessionApp(app, crdt.Timestamp{}, false, ts))
		return m
	}
	before, blog := session("shop"), session("blog")
	merge(t, db, crdt.SessionKey("0aa1"), before)
	merge(t, db, crdt.SessionKey("0aa2"), blog)
	withSessions := db.AppUsage("shop")

	end := db.Clock().Next()
	merge(t, db, crdt.AppKey("shop"), crdt.EndAppSessions(end, time.Minute))
	merge(t, db, crdt.SessionKey("0aa1"), crdt.RevokeSession(db.Clock().Next()))
	if _, ok := mustRecord(t, db, crdt.SessionKey("0aa1")); ok {
		t.Error("a session its app ended is still stored after a write")
	}
	if u := db.AppUsage("shop"); u.Records != 1 || u.Bytes >= withSessions.Bytes {
		t.Errorf("shop uses %+v after its session was dropped (%+v before), want its subject's record alone", u, withSessions)
	}
	// A copy from a peer that had not seen the end.
	res, err := db.ApplyRemote(ctx, []Change{{Key: crdt.SessionKey("0aa1"), Map: before}})
	if err != nil || res.Dropped != 1 {
		t.Errorf("ApplyRemote of the ended session = %+v, %v; want it dropped", res, err)
	}
	if _, ok := mustRecord(t, db, crdt.SessionKey("0aa2")); !ok {
		t.Error("another app's session was dropped")
	}
	clk.Add(2 * time.Minute) // past the end's window
	after := session("shop")
	merge(t, db, crdt.SessionKey("0aa3"), after)
	if _, ok := mustRecord(t, db, crdt.SessionKey("0aa3")); !ok {
		t.Error("a session made after the end was dropped")
	}
}
