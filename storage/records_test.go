package storage

import (
	"context"
	"strings"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

func TestMerge(t *testing.T) {
	t.Run("Idempotent", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		u := newUser(db, "alice")
		first := merge(t, db, key, u)
		seq := db.FeedSeq()
		second := merge(t, db, key, u)
		if !first.Equal(second) || db.FeedSeq() != seq {
			t.Errorf("second merge changed the record or the feed (FeedSeq %d → %d)", seq, db.FeedSeq())
		}
	})
	t.Run("Commutative", func(t *testing.T) {
		a, b := MustOpenDB(t), MustOpenDB(t)
		var u1, u2, u3 crdt.Map
		u1.Set("first_name", []byte("A"), ts(1, 10))
		u2.Set("first_name", []byte("B"), ts(2, 20))
		u3.Set("email", []byte("e"), ts(3, 5))
		key := crdt.UserKey("u1")
		for _, u := range []crdt.Map{u1, u2, u3} {
			merge(t, a, key, u)
		}
		for _, u := range []crdt.Map{u3, u2, u1} {
			merge(t, b, key, u)
		}
		ma, _ := mustRecord(t, a, key)
		mb, _ := mustRecord(t, b, key)
		if !ma.Equal(mb) || a.Digest() != b.Digest() {
			t.Error("merging in different orders gave different records")
		}
		if v, _ := ma.Get("first_name"); string(v) != "B" {
			t.Errorf("first_name = %q, want the later write B", v)
		}
	})
	t.Run("ReturnsMergedState", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		merge(t, db, key, newUser(db, "alice"))
		var upd crdt.Map
		upd.Set(crdt.FieldFirstName, []byte("Al"), db.Clock().Next())
		got := merge(t, db, key, upd)
		if u := crdt.ReadUser("u1", &got); u.Username != "alice" || u.Profile[crdt.FieldFirstName] != "Al" {
			t.Errorf("Merge returned %+v", u)
		}
	})
	// Merge and Record hand the caller the transaction's state without copying it
	// (crdt.Map.Share): a change the caller makes, inside the function or after, is its
	// own, and neither the stored record nor what a later merge in the function sees moves.
	t.Run("ReturnedStateIsTheCallers", func(t *testing.T) {
		db := MustOpenDB(t)
		key := crdt.UserKey("u1")
		merge(t, db, key, newUser(db, "alice"))
		var outside crdt.Map
		update(t, db, func(tx *Tx) error {
			var upd crdt.Map
			upd.Set(crdt.FieldFirstName, []byte("Al"), db.Clock().Next())
			got, err := tx.Merge(key, upd)
			if err != nil {
				return err
			}
			got.Set(crdt.FieldFirstName, []byte("caller's"), db.Clock().Next())
			rec, _, err := tx.Record(key)
			if err != nil {
				return err
			}
			rec.Set(crdt.FieldLastName, []byte("caller's too"), db.Clock().Next())
			if again, _, _ := tx.Record(key); firstName(again) != "Al" || lastName(again) != "" {
				t.Errorf("within the function, Record = %q %q after the caller changed its copies", firstName(again), lastName(again))
			}
			outside = got
			return nil
		})
		outside.Set(crdt.FieldEmail, []byte("x@example.com"), db.Clock().Next())
		if m, _ := mustRecord(t, db, key); firstName(m) != "Al" || lastName(m) != "" {
			t.Errorf("stored %q %q after the caller changed its copies", firstName(m), lastName(m))
		} else if v, _ := m.Get(crdt.FieldEmail); string(v) != "alice@example.com" {
			t.Errorf("stored email %q after the caller changed its copy", v)
		}
	})
	t.Run("EmptyUpdateStoresNothing", func(t *testing.T) {
		db := MustOpenDB(t)
		merge(t, db, "n/alice", crdt.Map{})
		if _, ok := mustRecord(t, db, "n/alice"); ok {
			t.Error("empty record stored")
		}
	})
	for _, key := range []string{"", "l/a:b/00", "u/x\x00y", strings.Repeat("u", MaxKeyLen+1)} {
		t.Run("ErrInvalidKey", func(t *testing.T) {
			db := MustOpenDB(t)
			err := db.Update(context.Background(), func(tx *Tx) error {
				_, err := tx.Merge(key, newUser(db, "x"))
				return err
			})
			if err == nil {
				t.Errorf("Merge(%q) succeeded", key)
			}
		})
	}
}

func TestRecord(t *testing.T) {
	db := MustOpenDB(t)
	claims := crdt.NewClaim("u1", db.Clock().Next())
	merge(t, db, crdt.ClaimKey("alice"), claims)
	merge(t, db, crdt.ClaimKey("alice"), crdt.NewClaim("u2", db.Clock().Next()))
	tests := []struct {
		name   string
		key    string
		wantOK bool
	}{
		{"OK", crdt.ClaimKey("alice"), true},
		{"Missing", crdt.ClaimKey("bob"), false},
		{"LogKeyIsNoRecord", LogKey("a:b", crdt.EntryID{TS: ts(1, 1), Seq: 1}), false},
		{"Empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ok := mustRecord(t, db, tt.key)
			if ok != tt.wantOK {
				t.Fatalf("Record(%q) ok = %v, want %v", tt.key, ok, tt.wantOK)
			}
			if ok {
				if got := crdt.Claimants(&m); len(got) != 2 || got[0] != "u1" {
					t.Errorf("Claimants = %q, want [u1 u2]", got)
				}
			}
		})
	}
	t.Run("ReturnsCopy", func(t *testing.T) {
		m, _ := mustRecord(t, db, crdt.ClaimKey("alice"))
		m.Set("junk", []byte("x"), db.Clock().Next())
		again, _ := mustRecord(t, db, crdt.ClaimKey("alice"))
		if again.Len() != 2 {
			t.Errorf("stored record changed by modifying a returned copy")
		}
	})
	t.Run("CanceledContext", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, err := db.Record(ctx, crdt.ClaimKey("alice")); err == nil {
			t.Error("Record with a done ctx succeeded")
		}
	})
}

func TestStats(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	merge(t, db, crdt.UserKey("u1"), newUser(db, "alice"))
	merge(t, db, crdt.UserKey("u2"), newUser(db, "bob"))
	merge(t, db, crdt.SessionKey("s1"), newSession(db, "u1", hour))
	merge(t, db, crdt.SessionKey("s2"), newSession(db, "u2", hour))
	update(t, db, func(tx *Tx) error {
		for range 3 {
			if _, err := tx.Append("u1:u2", crdt.Message{From: "u1", To: "u2", Body: "hi"}); err != nil {
				return err
			}
		}
		return nil
	})
	if st, _ := db.Stats(ctx); st != (Stats{Users: 2, Sessions: 2, Messages: 3}) {
		t.Errorf("Stats = %+v, want 2 users, 2 sessions, 3 messages", st)
	}
	merge(t, db, crdt.UserKey("u2"), crdt.EraseUser(db.Clock().Next()))
	if st, _ := db.Stats(ctx); st != (Stats{Users: 1, Sessions: 1, Messages: 0}) {
		t.Errorf("Stats after erasing u2 = %+v, want 1 user, 1 session, 0 messages", st)
	}
}

func TestRecords(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	a, b := crdt.UserKey("a"), crdt.UserKey("b")
	merge(t, db, a, newUser(db, "alice"))
	merge(t, db, b, newUser(db, "bob"))
	ms, ok, err := db.Records(ctx, b, crdt.UserKey("missing"), a)
	if err != nil {
		t.Fatalf("Records: %v", err)
	}
	if len(ms) != 3 || !ok[0] || ok[1] || !ok[2] {
		t.Fatalf("Records ok=%v, want [true false true]", ok)
	}
	for i, key := range []string{b, a} {
		want, _ := mustRecord(t, db, key)
		if got := ms[i*2]; !got.Equal(want) {
			t.Errorf("Records[%q] differs from Record", key)
		}
	}
	if ms[1].Len() != 0 {
		t.Errorf("Records[missing].Len()=%d, want 0", ms[1].Len())
	}
}

func TestRecordsUnder(t *testing.T) {
	db := MustOpenDB(t)
	ctx := context.Background()
	var m crdt.Map
	m.Set("x", []byte("1"), db.Clock().Next())
	// Keys just before, inside and just after the prefix, in bbolt's byte order.
	for _, k := range []string{"g/app/a", "g/signkey/a", "g/signkey/b", "g/signkey/c", "g/signkez", crdt.UserKey("u")} {
		merge(t, db, k, m)
	}
	for _, tc := range []struct {
		name  string
		limit int
		want  []string
		more  bool
	}{
		{"OK", 10, []string{"g/signkey/a", "g/signkey/b", "g/signkey/c"}, false},
		{"OKExactLimit", 3, []string{"g/signkey/a", "g/signkey/b", "g/signkey/c"}, false},
		{"OKLimited", 2, []string{"g/signkey/a", "g/signkey/b"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys, ms, more, err := db.RecordsUnder(ctx, "g/signkey/", tc.limit)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(keys, ",") != strings.Join(tc.want, ",") || more != tc.more || len(ms) != len(keys) {
				t.Fatalf("RecordsUnder = %q (%d maps), more %v; want %q, more %v", keys, len(ms), more, tc.want, tc.more)
			}
			for i := range ms {
				if !ms[i].Equal(m) {
					t.Errorf("record %q differs from what was merged", keys[i])
				}
			}
		})
	}
	if keys, _, _, err := db.RecordsUnder(ctx, "g/none/", 10); err != nil || len(keys) != 0 {
		t.Errorf("RecordsUnder(no such prefix) = %q, %v; want none", keys, err)
	}
}

func firstName(m crdt.Map) string {
	v, _ := m.Get(crdt.FieldFirstName)
	return string(v)
}

func lastName(m crdt.Map) string {
	v, _ := m.Get(crdt.FieldLastName)
	return string(v)
}
