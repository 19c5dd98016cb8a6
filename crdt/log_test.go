package crdt_test

import (
	"bytes"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

// origins are the node IDs that append in the log tests, small and large so that the
// byte order and the numeric order of IDs are both exercised.
var origins = []crdt.NodeID{1, 2, 0xff00000000000001, 0x8000000000000000}

// genEntries draws the entries several origins appended, as their HLCs would stamp them:
// per origin, seq 1, 2, 3, … with strictly increasing timestamps, and walls that often
// coincide across origins. With stepBack, an origin's timestamps may also go back, as
// when a node restarts without its clock state and its wall clock has been set back.
func genEntries(maxPerOrigin int, stepBack bool) *rapid.Generator[[]crdt.Entry] {
	return rapid.Custom(func(t *rapid.T) []crdt.Entry {
		var out []crdt.Entry
		for _, o := range origins[:rapid.IntRange(1, len(origins)).Draw(t, "origins")] {
			ts := crdt.Timestamp{Wall: epoch2026 + rapid.Int64Range(0, 3).Draw(t, "start"), Node: o}
			for seq := range uint64(rapid.IntRange(0, maxPerOrigin).Draw(t, "count")) {
				if stepBack && rapid.IntRange(0, 3).Draw(t, "restart") == 0 {
					ts.Wall -= rapid.Int64Range(1, 5).Draw(t, "back")
					ts.Logical = 0
				} else if rapid.Bool().Draw(t, "sameWall") {
					ts.Logical++
				} else {
					ts.Wall += rapid.Int64Range(1, 2).Draw(t, "step")
					ts.Logical = 0
				}
				id := crdt.EntryID{TS: ts, Seq: seq + 1}
				out = append(out, crdt.Entry{ID: id, Data: []byte(fmt.Sprintf("%v/%d", o, seq+1))})
			}
		}
		return out
	})
}

func logOf(entries []crdt.Entry) *crdt.Log {
	var l crdt.Log
	for _, e := range entries {
		l.Insert(e)
	}
	return &l
}

func sameEntries(a, b []crdt.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y crdt.Entry) bool { return x.ID == y.ID && bytes.Equal(x.Data, y.Data) })
}

// checkLog checks l's invariants against the set of entries inserted into it: every
// entry exactly once, in ID order, each origin's in seq order, and Stable, NextSeq as the
// present sequence numbers say.
func checkLog(t *rapid.T, l *crdt.Log, inserted []crdt.Entry) {
	want := slices.Clone(inserted)
	slices.SortFunc(want, func(a, b crdt.Entry) int { return a.ID.Compare(b.ID) })
	want = slices.CompactFunc(want, func(a, b crdt.Entry) bool { return a.ID == b.ID })
	got := l.Entries()
	if l.Len() != len(got) || !sameEntries(got, want) {
		t.Fatalf("Entries()=%v, want %v", got, want)
	}
	lastSeq := make(map[crdt.NodeID]uint64)
	present := make(map[crdt.NodeID]map[uint64]bool)
	for i, e := range got {
		if i > 0 && got[i-1].ID.Compare(e.ID) >= 0 {
			t.Fatalf("Entries()[%d]=%v after %v, want strictly increasing", i, e.ID, got[i-1].ID)
		}
		o := e.ID.Origin()
		if e.ID.Seq <= lastSeq[o] {
			t.Fatalf("Entries()[%d]: origin %v seq %d after seq %d, want the origin's order", i, o, e.ID.Seq, lastSeq[o])
		}
		lastSeq[o] = e.ID.Seq
		if present[o] == nil {
			present[o] = make(map[uint64]bool)
		}
		present[o][e.ID.Seq] = true
	}
	for _, e := range got {
		stable := true
		for s := uint64(1); s <= e.ID.Seq; s++ {
			stable = stable && present[e.ID.Origin()][s]
		}
		if l.Stable(e.ID) != stable {
			t.Fatalf("Stable(%v)=%v, want %v", e.ID, !stable, stable)
		}
	}
	for _, o := range origins {
		if got, want := l.NextSeq(o), lastSeq[o]+1; got != want {
			t.Fatalf("NextSeq(%v)=%d, want %d", o, got, want)
		}
	}
}

func subset(t *rapid.T, entries []crdt.Entry, label string) []crdt.Entry {
	var out []crdt.Entry
	for _, e := range entries {
		if rapid.Bool().Draw(t, label) {
			out = append(out, e)
		}
	}
	return rapid.Permutation(out).Draw(t, label+"Order")
}

func TestLogMergeLaws(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		all := genEntries(8, false).Draw(t, "entries")
		a, b, c := logOf(subset(t, all, "a")), logOf(subset(t, all, "b")), logOf(subset(t, all, "c"))
		merge := func(ls ...*crdt.Log) *crdt.Log {
			var out crdt.Log
			for _, l := range ls {
				out.Merge(l)
			}
			return &out
		}
		check := func(what string, x, y *crdt.Log) {
			if !sameEntries(x.Entries(), y.Entries()) {
				t.Fatalf("%s: Entries()=%v, want %v", what, x.Entries(), y.Entries())
			}
		}
		ab, ba := merge(a, b), merge(b, a)
		check("a⊔b vs b⊔a", ab, ba)
		checkLog(t, ab, slices.Concat(a.Entries(), b.Entries()))
		check("(a⊔b)⊔c vs a⊔(b⊔c)", merge(ab, c), merge(a, merge(b, c)))
		aa := merge(a)
		if aa.Merge(a) {
			t.Fatal("a.Merge(a)=true, want false")
		}
		check("a⊔a vs a", aa, a)
		if ab.Merge(b) {
			t.Fatal("(a⊔b).Merge(b)=true, want false")
		}
	})
}

// TestLogConvergence delivers the same entries to 3–6 replicas in different orders, with
// duplicates, directly or by merging other replicas: all end with the same entries in the
// same order.
func TestLogConvergence(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		all := genEntries(10, false).Draw(t, "entries")
		n := rapid.IntRange(3, 6).Draw(t, "replicas")
		replicas := make([]*crdt.Log, n)
		for i := range replicas {
			replicas[i] = new(crdt.Log)
			sched := slices.Concat(all, subset(t, all, "dups"))
			for _, e := range rapid.Permutation(sched).Draw(t, "order") {
				if i > 0 && rapid.IntRange(0, 5).Draw(t, "gossip") == 0 {
					replicas[i].Merge(replicas[rapid.IntRange(0, i-1).Draw(t, "peer")])
				}
				replicas[i].Insert(e)
			}
			checkLog(t, replicas[i], all)
		}
	})
}

// TestLogCursor pages a reader through a log while its entries arrive late and out of
// order at up to three replicas, the reader hopping between replicas and keeping its
// cursor only in encoded form. The reader must receive every entry exactly once, each
// origin's entries in seq order without gaps, and every page in log order. That holds
// even when an origin's timestamps went back (stepBack), which breaks the log's order of
// that origin's entries but must not make a reader skip one.
func TestLogCursor(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		stepBack := rapid.IntRange(0, 3).Draw(t, "stepBack") == 0
		all := genEntries(10, stepBack).Draw(t, "entries")
		replicas := make([]*crdt.Log, rapid.IntRange(1, 3).Draw(t, "replicas"))
		pending := make([][]crdt.Entry, len(replicas))
		for i := range replicas {
			replicas[i] = new(crdt.Log)
			pending[i] = rapid.Permutation(slices.Concat(all, subset(t, all, "dups"))).Draw(t, "arrivals")
		}
		cursor := crdt.Cursor(nil).AppendBinary(nil)
		got := make(map[crdt.EntryID]int)
		next := make(map[crdt.NodeID]uint64) // per origin, the seq the reader expects next

		read := func(t *rapid.T, r, limit int) int {
			l := replicas[r]
			cur, err := crdt.DecodeCursor(cursor)
			if err != nil {
				t.Fatalf("DecodeCursor(%x): %v", cursor, err)
			}
			page, after := l.Read(cur, limit)
			if limit > 0 && len(page) > limit {
				t.Fatalf("Read(limit %d) returned %d entries", limit, len(page))
			}
			for i, e := range page {
				if i > 0 && page[i-1].ID.Compare(e.ID) >= 0 {
					t.Fatalf("Read: page[%d]=%v after %v, want log order", i, e.ID, page[i-1].ID)
				}
				if !l.Stable(e.ID) || cur.Seen(e.ID) || !after.Seen(e.ID) {
					t.Fatalf("Read: %v: Stable=%v, Seen(before)=%v, Seen(after)=%v, want true, false, true",
						e.ID, l.Stable(e.ID), cur.Seen(e.ID), after.Seen(e.ID))
				}
				o := e.ID.Origin()
				if want := next[o] + 1; e.ID.Seq != want {
					t.Fatalf("Read: origin %v seq %d, want %d (skipped or repeated)", o, e.ID.Seq, want)
				}
				next[o] = e.ID.Seq
				got[e.ID]++
			}
			for o, s := range cur {
				if after[o] < s {
					t.Fatalf("Read: cursor[%v] went back from %d to %d", o, s, after[o])
				}
			}
			if !maps.Equal(after, next) {
				t.Fatalf("Read: cursor %v, want %v", after, next)
			}
			cursor = after.AppendBinary(nil)
			return len(page)
		}

		t.Repeat(map[string]func(*rapid.T){
			"Arrive": func(t *rapid.T) {
				r := rapid.IntRange(0, len(replicas)-1).Draw(t, "replica")
				if len(pending[r]) == 0 {
					t.Skip("nothing left to arrive")
				}
				replicas[r].Insert(pending[r][0])
				pending[r] = pending[r][1:]
			},
			"Read": func(t *rapid.T) {
				read(t, rapid.IntRange(0, len(replicas)-1).Draw(t, "replica"), rapid.IntRange(0, 4).Draw(t, "limit"))
			},
		})
		// Everything arrives; the reader drains the log page by page.
		for r := range replicas {
			for _, e := range pending[r] {
				replicas[r].Insert(e)
			}
			if !stepBack {
				checkLog(t, replicas[r], all)
			}
		}
		r := rapid.IntRange(0, len(replicas)-1).Draw(t, "drainReplica")
		limit := rapid.IntRange(1, 4).Draw(t, "drainLimit")
		for range len(all) + 1 {
			if read(t, r, limit) == 0 {
				break
			}
		}
		for _, e := range all {
			if got[e.ID] != 1 {
				t.Fatalf("entry %v received %d times, want once", e.ID, got[e.ID])
			}
		}
		if len(got) != len(all) {
			t.Fatalf("received %d entries, want %d", len(got), len(all))
		}
	})
}

func TestLogInsert(t *testing.T) {
	id := func(wall int64, node crdt.NodeID, seq uint64) crdt.EntryID {
		return crdt.EntryID{TS: crdt.Timestamp{Wall: epoch2026 + wall, Node: node}, Seq: seq}
	}
	t.Run("OK", func(t *testing.T) {
		var l crdt.Log
		data := []byte("hello")
		if !l.Insert(crdt.Entry{ID: id(1, 1, 1), Data: data}) {
			t.Fatal("Insert(1/1)=false, want true")
		}
		data[0] = 'X' // the Log must not retain the caller's slice
		if got := string(l.Entries()[0].Data); got != "hello" {
			t.Fatalf("Data=%q, want %q", got, "hello")
		}
		if l.Insert(crdt.Entry{ID: id(1, 1, 1), Data: []byte("again")}) {
			t.Fatal("Insert(1/1) twice=true, want false")
		}
	})
	t.Run("ErrZeroSeq", func(t *testing.T) {
		var l crdt.Log
		if l.Insert(crdt.Entry{ID: id(1, 1, 0)}) || l.Len() != 0 {
			t.Fatal("Insert(seq 0)=true, want false")
		}
	})
	t.Run("LateArrival", func(t *testing.T) {
		var l crdt.Log
		l.Insert(crdt.Entry{ID: id(1, 1, 1)})
		l.Insert(crdt.Entry{ID: id(3, 1, 3)})
		l.Insert(crdt.Entry{ID: id(2, 2, 1)})
		if got := l.NextSeq(1); got != 4 {
			t.Fatalf("NextSeq(1)=%d, want 4", got)
		}
		page, cur := l.Read(nil, 0)
		if len(page) != 2 || page[0].ID != id(1, 1, 1) || page[1].ID != id(2, 2, 1) {
			t.Fatalf("Read(nil)=%v, want 1/1 and 2/1 (1/3 held back)", page)
		}
		l.Insert(crdt.Entry{ID: id(2, 1, 2)}) // the gap fills, before an entry already read
		page, cur = l.Read(cur, 0)
		if len(page) != 2 || page[0].ID != id(2, 1, 2) || page[1].ID != id(3, 1, 3) {
			t.Fatalf("Read(%v)=%v, want 1/2 and 1/3", cur, page)
		}
		if page, _ := l.Read(cur, 0); len(page) != 0 {
			t.Fatalf("Read at the end=%v, want none", page)
		}
	})
	t.Run("CursorClone", func(t *testing.T) {
		var c crdt.Cursor
		d := c.Clone()
		if d == nil {
			t.Fatal("Cursor(nil).Clone()=nil, want an empty map")
		}
		d[1] = 5
		if c.Seen(id(0, 1, 1)) || !d.Seen(id(0, 1, 5)) || d.Seen(id(0, 1, 6)) {
			t.Fatal("Seen disagrees with the marks")
		}
	})
}

// benchLog returns a log of n entries from 4 origins, inserted in log order.
func benchLog(n int) (*crdt.Log, []crdt.Entry) {
	entries := make([]crdt.Entry, n)
	for i := range entries {
		o := origins[i%len(origins)]
		entries[i] = crdt.Entry{
			ID:   crdt.EntryID{TS: crdt.Timestamp{Wall: epoch2026 + int64(i), Node: o}, Seq: uint64(i/len(origins) + 1)},
			Data: make([]byte, 100),
		}
	}
	return logOf(entries), entries
}

func BenchmarkLogInsert(b *testing.B) {
	const n = 10000
	_, entries := benchLog(n)
	shuffled := slices.Clone(entries)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for _, tc := range []struct {
		name    string
		entries []crdt.Entry
	}{{"InOrder", entries}, {"Shuffled", shuffled}} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				logOf(tc.entries)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		})
	}
}

func BenchmarkLogRead(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		l, _ := benchLog(n)
		b.Run(fmt.Sprintf("Page50of%d", n), func(b *testing.B) {
			_, mid := l.Read(nil, n/2) // a reader half-way through
			b.ReportAllocs()
			for b.Loop() {
				l.Read(mid, 50)
			}
		})
		b.Run(fmt.Sprintf("Tail%d", n), func(b *testing.B) {
			_, end := l.Read(nil, 0) // a reader that is up to date polls for more
			b.ReportAllocs()
			for b.Loop() {
				l.Read(end, 50)
			}
		})
	}
}
