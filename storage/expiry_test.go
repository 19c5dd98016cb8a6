package storage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestSweep(t *testing.T) {
	t.Run("OK", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		ctx := context.Background()
		merge(t, db, crdt.SessionKey("short"), newSession(db, "u1", hour))
		merge(t, db, crdt.SessionKey("long"), newSession(db, "u1", 2*hour))
		before := db.Digest()
		if n, err := db.Sweep(ctx, clk.Now()); n != 0 || err != nil {
			t.Fatalf("Sweep before expiry = %d, %v", n, err)
		}
		clk.Add(hour) // "short" expires exactly now: swept
		if n, err := db.Sweep(ctx, clk.Now()); n != 1 || err != nil {
			t.Fatalf("Sweep = %d, %v; want 1", n, err)
		}
		if _, ok := mustRecord(t, db, crdt.SessionKey("short")); ok {
			t.Error("expired session still stored")
		}
		if _, ok := mustRecord(t, db, crdt.SessionKey("long")); !ok {
			t.Error("unexpired session swept")
		}
		if ss, _ := db.UserSessions(ctx, "u1"); len(ss) != 1 {
			t.Errorf("UserSessions after sweep = %d sessions, want 1", len(ss))
		}
		if db.Digest() == before {
			t.Error("digest unchanged by sweep")
		}
		if cs := allChanges(t, db); len(cs) != 1 || cs[0].Key != crdt.SessionKey("long") {
			t.Errorf("feed after sweep = %v", cs)
		}
	})
	t.Run("IdleAndRevokedKeptUntilAbsoluteExpiry", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		ctx := context.Background()
		idle := crdt.NewSession("u1", clk.Now().Add(24*hour), time.Minute, db.Clock().Next())
		merge(t, db, crdt.SessionKey("idle"), idle)
		merge(t, db, crdt.SessionKey("revoked"), newSession(db, "u1", 24*hour))
		merge(t, db, crdt.SessionKey("revoked"), crdt.RevokeSession(db.Clock().Next()))
		clk.Add(23 * hour)
		if n, _ := db.Sweep(ctx, clk.Now()); n != 0 {
			t.Fatalf("Sweep removed %d idle or revoked sessions before absolute expiry", n)
		}
		// A touch from another node that used the idle session in time still lands.
		touch := crdt.TouchSession(ts(99, clk.Now().UnixNano()))
		m := merge(t, db, crdt.SessionKey("idle"), touch)
		if s := crdt.ReadSession("idle", &m); !s.ActiveAt(clk.Now()) {
			t.Error("touched idle session not active")
		}
		clk.Add(2 * hour)
		if n, _ := db.Sweep(ctx, clk.Now()); n != 2 {
			t.Errorf("Sweep after absolute expiry = %d, want 2", n)
		}
	})
	t.Run("ManyChunks", func(t *testing.T) {
		clk := newTestClock()
		db := MustOpenDB(t, Options{Now: clk.Now})
		const n = sweepChunk*2 + 5
		update(t, db, func(tx *Tx) error {
			for i := range n {
				if _, err := tx.Merge(crdt.SessionKey(fmt.Sprint(i)), newSession(db, "u1", hour)); err != nil {
					return err
				}
			}
			return nil
		})
		clk.Add(2 * hour)
		if got, err := db.Sweep(context.Background(), clk.Now()); got != n || err != nil {
			t.Errorf("Sweep = %d, %v; want %d", got, err, n)
		}
	})
}

func TestExpiredOnArrival(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	expired := crdt.NewSession("u1", clk.Now().Add(-time.Second), time.Hour, ts(5, clk.Now().Add(-time.Hour).UnixNano()))
	t.Run("ApplyRemote", func(t *testing.T) {
		res, err := db.ApplyRemote(ctx, []Change{{Key: crdt.SessionKey("old"), Map: expired}})
		if err != nil || counts(res) != (applyCounts{Dropped: 1}) {
			t.Errorf("ApplyRemote = %+v, %v; want 1 dropped", res, err)
		}
	})
	t.Run("Merge", func(t *testing.T) {
		got := merge(t, db, crdt.SessionKey("old2"), expired)
		if !got.Equal(expired) {
			t.Error("Merge did not return the merged state")
		}
		if _, ok := mustRecord(t, db, crdt.SessionKey("old2")); ok {
			t.Error("expired session stored")
		}
	})
	t.Run("TouchOfMissingSession", func(t *testing.T) {
		merge(t, db, crdt.SessionKey("ghost"), crdt.TouchSession(db.Clock().Next()))
		if _, ok := mustRecord(t, db, crdt.SessionKey("ghost")); ok {
			t.Error("session without expiry or owner stored")
		}
	})
	t.Run("MergeIntoExpiredDeletes", func(t *testing.T) {
		merge(t, db, crdt.SessionKey("s"), newSession(db, "u1", hour))
		clk.Add(2 * hour) // expired, not swept
		if _, ok := mustRecord(t, db, crdt.SessionKey("s")); !ok {
			t.Fatal("unswept session missing")
		}
		update(t, db, func(tx *Tx) error {
			if _, err := tx.Merge(crdt.SessionKey("s"), crdt.TouchSession(db.Clock().Next())); err != nil {
				return err
			}
			if _, ok, _ := tx.Record(crdt.SessionKey("s")); ok {
				t.Error("Tx.Record sees a dropped session")
			}
			return nil
		})
		if _, ok := mustRecord(t, db, crdt.SessionKey("s")); ok {
			t.Error("expired session kept after a merge")
		}
	})
	if st, _ := db.Stats(ctx); st.Sessions != 0 {
		t.Errorf("Stats.Sessions = %d, want 0", st.Sessions)
	}
}

// TestSubjectRecordExpires: a subject's record with a keep time is kept until then, swept
// with the sessions (its app gets the room back), and dropped when a copy arrives later;
// one without (an earlier release's) and a registered user's are kept for good.
func TestSubjectRecordExpires(t *testing.T) {
	clk := newTestClock()
	db := MustOpenDB(t, Options{Now: clk.Now})
	ctx := context.Background()
	kept, legacy := crdt.UserKey(crdt.SubjectID("shop", "alice")), crdt.UserKey(crdt.SubjectID("shop", "bob"))
	subject := crdt.NewSubject("shop", "alice", db.Clock().Next())
	subject.Merge(crdt.KeepSubjectUntil(clk.Now().Add(2*hour), db.Clock().Next()))
	merge(t, db, kept, subject)
	merge(t, db, legacy, crdt.NewSubject("shop", "bob", db.Clock().Next()))
	merge(t, db, crdt.UserKey("u1"), newUser(db, "carol"))
	withBoth := db.AppUsage("shop")

	// A later session raises the keep time: the record stays past the first.
	clk.Add(hour)
	merge(t, db, kept, crdt.KeepSubjectUntil(clk.Now().Add(2*hour), db.Clock().Next()))
	clk.Add(hour + time.Minute)
	if n, err := db.Sweep(ctx, clk.Now()); n != 0 || err != nil {
		t.Fatalf("Sweep before the raised keep time = %d, %v", n, err)
	}
	clk.Add(hour)
	if n, err := db.Sweep(ctx, clk.Now()); n != 1 || err != nil {
		t.Fatalf("Sweep = %d, %v; want the subject's record", n, err)
	}
	if _, ok := mustRecord(t, db, kept); ok {
		t.Error("a subject's record past its keep time is still stored")
	}
	for _, key := range []string{legacy, crdt.UserKey("u1")} {
		if _, ok := mustRecord(t, db, key); !ok {
			t.Errorf("%s swept: it has no keep time", key)
		}
	}
	if u := db.AppUsage("shop"); u.Records != 1 || u.Bytes >= withBoth.Bytes {
		t.Errorf("shop uses %+v after the sweep (%+v before); want the room back", u, withBoth)
	}
	if st, _ := db.Stats(ctx); st.Users != 2 {
		t.Errorf("Stats.Users = %d, want 2", st.Users)
	}
	// The record as another node still holds it arrives: dropped.
	res, err := db.ApplyRemote(ctx, []Change{{Key: kept, Map: subject}})
	if err != nil || counts(res) != (applyCounts{Dropped: 1}) {
		t.Errorf("ApplyRemote of the expired record = %+v, %v; want 1 dropped", res, err)
	}
	// A new session's keep time brings it back.
	merge(t, db, kept, crdt.KeepSubjectUntil(clk.Now().Add(hour), db.Clock().Next()))
	if m, ok := mustRecord(t, db, kept); !ok || crdt.SubjectKeepNanos(&m) != clk.Now().Add(hour).UnixNano() {
		t.Errorf("a subject's record kept anew: stored %v", ok)
	}
}
