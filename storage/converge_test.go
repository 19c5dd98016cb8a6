package storage

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// TestConverge has three nodes write concurrently to overlapping keys (users, claims,
// sessions, messages, an erasure), records every change each commit reports, and
// delivers all of them to two more nodes in different random orders, batches and with
// duplicates. Both must end with the same records and messages; the erasure markers each
// left of its own (where a message of the erased user arrived after the erasure) differ,
// and once they have exchanged what they hold, as anti-entropy does, both hold the same
// digest and the same ChangesSince contents.
func TestConverge(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(uint64(seed), 2))
	clk := newTestClock()
	ctx := context.Background()

	var mu sync.Mutex
	var shipped []Change
	record := func(cs []Change) {
		mu.Lock()
		defer mu.Unlock()
		shipped = append(shipped, cs...)
	}
	var srcs []*DB
	for range 3 {
		srcs = append(srcs, MustOpenDB(t, Options{Now: clk.Now, OnCommit: record}))
	}
	users := []string{"u0", "u1", "u2", "u3"}
	for step := range 300 {
		db := srcs[rng.IntN(len(srcs))]
		u := users[rng.IntN(len(users))]
		v := users[rng.IntN(len(users))]
		clk.Add(time.Duration(rng.IntN(1000)) * time.Millisecond)
		update(t, db, func(tx *Tx) error {
			var err error
			switch op := rng.IntN(10); {
			case step == 250:
				_, err = tx.Merge(crdt.UserKey("u3"), crdt.EraseUser(db.Clock().Next()))
			case op < 2:
				_, err = tx.Merge(crdt.UserKey(u), newUser(db, u+"-name"))
			case op < 3:
				_, err = tx.Merge(crdt.ClaimKey("name-"+fmt.Sprint(rng.IntN(3))), crdt.NewClaim(u, db.Clock().Next()))
			case op < 4:
				_, err = tx.Merge(crdt.SessionKey(sessionKey(u, rng.IntN(3))), newSession(db, u, 48*hour))
			case op < 5:
				_, err = tx.Merge(crdt.SessionKey(sessionKey(u, rng.IntN(3))), crdt.TouchSession(db.Clock().Next()))
			case op < 6:
				_, err = tx.Merge(crdt.SessionKey(sessionKey(u, rng.IntN(3))), crdt.RevokeSession(db.Clock().Next()))
			case op < 7:
				var m crdt.Map
				m.Set(crdt.FieldFirstName, []byte(fmt.Sprint(step)), db.Clock().Next())
				_, err = tx.Merge(crdt.UserKey(u), m)
			default:
				if u == v {
					return nil
				}
				if tx.b.erasedFor(tx, u) || tx.b.erasedFor(tx, v) {
					return nil // the handlers check this before appending
				}
				_, err = tx.Append(crdt.ConversationID(u, v), crdt.Message{From: u, To: v, Body: fmt.Sprint(step)})
			}
			return err
		})
	}
	// An expired session that some node still ships.
	shipped = append(shipped, Change{Key: "s/old", Map: crdt.NewSession("u0", clk.Now().Add(-time.Minute), time.Hour, ts(9, clk.Now().Add(-time.Hour).UnixNano()))})
	t.Logf("%d changes shipped", len(shipped))

	deliver := func(db *DB) {
		cs := append(slices.Clone(shipped), shipped[:len(shipped)/4]...)
		rng.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
		for len(cs) > 0 {
			n := min(len(cs), 1+rng.IntN(20))
			if _, err := db.ApplyRemote(ctx, cs[:n]); err != nil {
				t.Fatal(err)
			}
			cs = cs[n:]
		}
	}
	a := MustOpenDB(t, Options{Now: clk.Now})
	b := MustOpenDB(t, Options{Now: clk.Now})
	deliver(a)
	deliver(b)
	checkInvariants(t, a)
	checkInvariants(t, b)
	if ca, cb := contents(t, a, withoutMarkers), contents(t, b, withoutMarkers); !slices.Equal(ca, cb) {
		t.Errorf("records and messages differ: %d and %d keys", len(ca), len(cb))
	}
	if n := exchange(t, a, b); n > 0 {
		t.Logf("%d erasure markers left by the receivers exchanged", n)
	}
	if n := exchange(t, a, b); n > 0 {
		t.Errorf("a second exchange applied %d changes: a marker led to another", n)
	}
	checkInvariants(t, a)
	checkInvariants(t, b)
	if a.Digest() != b.Digest() {
		da, db := a.Digest(), b.Digest()
		t.Errorf("digest roots %x and %x differ", da.Root(), db.Root())
	}
	ca, cb := contents(t, a, nil), contents(t, b, nil)
	if !slices.Equal(ca, cb) {
		t.Errorf("ChangesSince contents differ: %d and %d keys", len(ca), len(cb))
		ka, kb := map[string]string{}, map[string]string{}
		for _, s := range ca {
			k, v, _ := strings.Cut(s, "=")
			ka[k] = v
		}
		for _, s := range cb {
			k, v, _ := strings.Cut(s, "=")
			kb[k] = v
		}
		for k := range ka {
			if ka[k] != kb[k] {
				t.Errorf("key %q: %x vs %x", k, ka[k], kb[k])
			}
		}
		for k := range kb {
			if _, ok := ka[k]; !ok {
				t.Errorf("key %q only in b", k)
			}
		}
	}
	// The sources, once they have everything too, agree with them.
	for _, src := range srcs {
		deliver(src)
		exchange(t, src, a)
		if src.Digest() != a.Digest() {
			t.Errorf("source %s differs after delivery", src.NodeID())
		}
	}
	m, _ := mustRecord(t, a, crdt.UserKey("u3"))
	if !crdt.ReadUser("u3", &m).Deleted {
		t.Error("u3 not erased")
	}
}

// sessionKey names a session of user. Each session ID has one owner, as with the random
// IDs the handlers create: two creations of one ID with different owners or expiries
// are not a case the drop rules converge on before the sessions expire (see doc.go).
func sessionKey(user string, n int) string { return crdt.SessionKey(fmt.Sprintf("%s-%d", user, n)) }

// contents returns ChangesSince(0) as sorted "key=encoding" strings, leaving out the
// changes skip says to (nil: none).
func contents(t *testing.T, db *DB, skip func(Change) bool) []string {
	var out []string
	for _, c := range allChanges(t, db) {
		if skip != nil && skip(c) {
			continue
		}
		enc := c.AppendBinary(nil)
		out = append(out, c.Key+"="+string(bytes.Clone(enc)))
	}
	slices.Sort(out)
	return out
}

func withoutMarkers(c Change) bool { return crdt.IsErasureMarker(c.Entry.Data) }

// exchange applies what each of dbs holds to every other, as anti-entropy would, and
// returns how many changes that applied.
func exchange(tb testing.TB, dbs ...*DB) int {
	tb.Helper()
	applied := 0
	for _, from := range dbs {
		cs := allChanges(tb, from)
		for _, to := range dbs {
			if to == from {
				continue
			}
			res, err := to.ApplyRemote(context.Background(), cs)
			if err != nil {
				tb.Fatalf("ApplyRemote: %v", err)
			}
			applied += res.Applied
		}
	}
	return applied
}
