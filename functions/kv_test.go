package functions

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/sessiond/sessiond/crdt"
)

func newKV(tb testing.TB) (*KV, *testEnv) {
	e := newTestEnv(tb)
	return &KV{Store: e.store, Lister: e.store, Clock: e.clock}, e
}

func values(it KVItem) map[string]string {
	out := make(map[string]string, len(it.Value))
	for k, v := range it.Value {
		out[k] = string(v)
	}
	return out
}

func mustPut(tb testing.TB, kv *KV, app, key string, value map[string]json.RawMessage, ttl time.Duration) KVItem {
	tb.Helper()
	it, err := kv.Put(context.Background(), app, key, KVPut{Value: value, TTL: ttl})
	if err != nil {
		tb.Fatalf("Put(%q, %q): %v", app, key, err)
	}
	return it
}

func TestKVPutGet(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	it := mustPut(t, kv, "shop", "tok", map[string]json.RawMessage{"cart": raw(`[1,2]`), "user": raw(`"alice"`), "gone": raw("null")}, time.Hour)
	want := map[string]string{"cart": "[1,2]", "user": `"alice"`}
	if it.Key != "tok" || !maps.Equal(values(it), want) || !it.ExpiresAt.Equal(testEpoch.Add(time.Hour)) {
		t.Fatalf("Put=%+v, want %v expiring %v", it, want, testEpoch.Add(time.Hour))
	}
	got, err := kv.Get(ctx, "shop", "tok")
	if err != nil || !maps.Equal(values(got), want) || !got.ExpiresAt.Equal(it.ExpiresAt) {
		t.Fatalf("Get=%+v, %v", got, err)
	}
	// Another app's namespace does not hold it.
	_, err = kv.Get(ctx, "blog", "tok")
	wantCode(t, err, ENotFound)
	// A put replaces the whole value.
	mustPut(t, kv, "shop", "tok", map[string]json.RawMessage{"theme": raw(`"dark"`)}, 2*time.Hour)
	if got, _ := kv.Get(ctx, "shop", "tok"); !maps.Equal(values(got), map[string]string{"theme": `"dark"`}) {
		t.Errorf("after a second put: %v", values(got))
	}
	e.now.Advance(2*time.Hour - time.Nanosecond)
	if _, err := kv.Get(ctx, "shop", "tok"); err != nil {
		t.Errorf("Get just before expiry: %v", err)
	}
	e.now.Advance(time.Nanosecond)
	_, err = kv.Get(ctx, "shop", "tok")
	wantCode(t, err, ENotFound)
	// An expired key is written anew by a put, but not by a patch.
	_, err = kv.Patch(ctx, "shop", "tok", KVPatch{Set: map[string]json.RawMessage{"a": raw("1")}})
	wantCode(t, err, ENotFound)
	mustPut(t, kv, "shop", "tok", map[string]json.RawMessage{"a": raw("1")}, time.Hour)
	if got, _ := kv.Get(ctx, "shop", "tok"); !maps.Equal(values(got), map[string]string{"a": "1"}) {
		t.Errorf("after a put of an expired key: %v", values(got))
	}
}

func TestKVPatch(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	_, err := kv.Patch(ctx, "shop", "none", KVPatch{Set: map[string]json.RawMessage{"a": raw("1")}})
	wantCode(t, err, ENotFound)
	mustPut(t, kv, "shop", "k", map[string]json.RawMessage{"a": raw("1"), "b": raw("2")}, time.Hour)
	e.now.Advance(time.Minute)
	it, err := kv.Patch(ctx, "shop", "k", KVPatch{Set: map[string]json.RawMessage{"c": raw("3")}, Delete: []string{"a", "never"}})
	if err != nil || !maps.Equal(values(it), map[string]string{"b": "2", "c": "3"}) || !it.ExpiresAt.Equal(testEpoch.Add(time.Hour)) {
		t.Fatalf("Patch=%+v, %v", it, err)
	}
	// Deleting a field never set leaves no tombstone.
	if _, _, names := crdt.KVSize(ptrMap(e.store.record(crdt.KVKey("shop", "k")))); names != 3 {
		t.Errorf("%d field names stored, want 3 (a's tombstone, b, c)", names)
	}
	it, err = kv.Patch(ctx, "shop", "k", KVPatch{TTL: 10 * time.Minute})
	if err != nil || !it.ExpiresAt.Equal(testEpoch.Add(11*time.Minute)) {
		t.Errorf("Patch TTL: expires %v, %v, want %v", it.ExpiresAt, err, testEpoch.Add(11*time.Minute))
	}
	_, err = kv.Patch(ctx, "shop", "k", KVPatch{Set: map[string]json.RawMessage{"a": raw("null")}})
	wantCode(t, err, EInvalid)
}

func ptrMap(m crdt.Map) *crdt.Map { return &m }

// TestKVConcurrentFields: patches of different fields made on two nodes that have not
// seen each other's both survive, wherever they meet.
func TestKVConcurrentFields(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	mustPut(t, kv, "shop", "k", map[string]json.RawMessage{"cart": raw("[]"), "user": raw(`"a"`)}, time.Hour)
	// The other node patched cart after our put (it had received it), concurrently with
	// our patch of user.
	other := crdt.Timestamp{Wall: testEpoch.Add(time.Second).UnixNano(), Node: 2}
	if _, err := kv.Patch(ctx, "shop", "k", KVPatch{Set: map[string]json.RawMessage{"user": raw(`"b"`)}}); err != nil {
		t.Fatal(err)
	}
	e.store.merge(crdt.KVKey("shop", "k"), crdt.KVPatch(map[string][]byte{"cart": []byte("[7]")}, nil, time.Time{}, other))
	got, err := kv.Get(ctx, "shop", "k")
	if want := map[string]string{"cart": "[7]", "user": `"b"`}; err != nil || !maps.Equal(values(got), want) {
		t.Errorf("Get=%v, %v, want %v", values(got), err, want)
	}
}

// TestKVDeleteWins: after a delete, the key stays gone: writes through the API are
// refused, and a write stamped later that arrives from another node does not bring it
// back.
func TestKVDeleteWins(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	mustPut(t, kv, "shop", "k", map[string]json.RawMessage{"a": raw("1")}, 3*time.Hour)
	if err := kv.Delete(ctx, "shop", "k"); err != nil {
		t.Fatal(err)
	}
	_, err := kv.Get(ctx, "shop", "k")
	wantCode(t, err, ENotFound)
	_, err = kv.Put(ctx, "shop", "k", KVPut{Value: map[string]json.RawMessage{"a": raw("2")}, TTL: time.Hour})
	wantCode(t, err, EKeyDeleted)
	_, err = kv.Patch(ctx, "shop", "k", KVPatch{Set: map[string]json.RawMessage{"a": raw("2")}})
	wantCode(t, err, EKeyDeleted)
	late := crdt.Timestamp{Wall: testEpoch.Add(time.Minute).UnixNano(), Node: 2}
	e.store.merge(crdt.KVKey("shop", "k"), crdt.KVPut(map[string][]byte{"a": []byte("3")}, testEpoch.Add(5*time.Hour), late))
	_, err = kv.Get(ctx, "shop", "k")
	wantCode(t, err, ENotFound)
	m := e.store.record(crdt.KVKey("shop", "k"))
	if v := crdt.ReadKV(&m); !v.Deleted || !v.Keep.Equal(testEpoch.Add(5*time.Hour)) {
		t.Errorf("tombstone %+v: want deleted, kept until the late write's expiry", v)
	}
	// Deleting a key never written leaves a tombstone for the grace period.
	if err := kv.Delete(ctx, "shop", "never"); err != nil {
		t.Fatal(err)
	}
	m = e.store.record(crdt.KVKey("shop", "never"))
	if v := crdt.ReadKV(&m); !v.Deleted || !v.Keep.Equal(testEpoch.Add(KVTombstoneGrace)) {
		t.Errorf("tombstone of a key never written: %+v", v)
	}
}

func TestKVLimits(t *testing.T) {
	ctx := context.Background()
	kv, _ := newKV(t)
	v1 := map[string]json.RawMessage{"a": raw("1")}
	for _, tc := range []struct {
		name, app, key string
		value          map[string]json.RawMessage
		ttl            time.Duration
		code           string
	}{
		{"OK", "shop", "Ab0-_.~:@+=", v1, time.Hour, ""},
		{"OKScsToken", "shop", strings.Repeat("x", 43), v1, time.Hour, ""},
		{"OKLongestKey", "shop", strings.Repeat("k", MaxKVKey), v1, time.Hour, ""},
		{"OKLongestTTL", "shop", "long", v1, MaxKVTTL, ""},
		{"ErrEmptyKey", "shop", "", v1, time.Hour, EInvalid},
		{"ErrLongKey", "shop", strings.Repeat("k", MaxKVKey+1), v1, time.Hour, EInvalid},
		{"ErrSlash", "shop", "a/b", v1, time.Hour, EInvalid},
		{"ErrSpace", "shop", "a b", v1, time.Hour, EInvalid},
		{"ErrPercent", "shop", "a%2F", v1, time.Hour, EInvalid},
		{"ErrUnicode", "shop", "ключ", v1, time.Hour, EInvalid},
		{"ErrDot", "shop", ".", v1, time.Hour, EInvalid},
		{"ErrDotDot", "shop", "..", v1, time.Hour, EInvalid},
		{"ErrNUL", "shop", "a\x00", v1, time.Hour, EInvalid},
		{"ErrApp", "a/b", "k", v1, time.Hour, EInvalid},
		{"ErrEmptyApp", "", "k", v1, time.Hour, EInvalid},
		{"ErrNoTTL", "shop", "k", v1, 0, EInvalid},
		{"ErrNegativeTTL", "shop", "k", v1, -time.Second, EInvalid},
		{"ErrLongTTL", "shop", "k", v1, MaxKVTTL + time.Second, EInvalid},
		{"ErrFieldName", "shop", "k", map[string]json.RawMessage{"": raw("1")}, time.Hour, EInvalid},
		{"ErrLongFieldName", "shop", "k", map[string]json.RawMessage{strings.Repeat("f", MaxKVField+1): raw("1")}, time.Hour, EInvalid},
		{"ErrControlFieldName", "shop", "k", map[string]json.RawMessage{"a\nb": raw("1")}, time.Hour, EInvalid},
		{"ErrNotJSON", "shop", "k", map[string]json.RawMessage{"a": raw("{")}, time.Hour, EInvalid},
		{"ErrEmptyValue", "shop", "k", map[string]json.RawMessage{"a": raw("")}, time.Hour, EInvalid},
		{"ErrHugeField", "shop", "k", map[string]json.RawMessage{"a": raw(`"` + strings.Repeat("x", MaxKVValue) + `"`)}, time.Hour, ETooLarge},
		{"ErrHugeValue", "shop", "k", manyFields(8, 9<<10), time.Hour, ETooLarge},
		{"ErrManyFields", "shop", "k", manyFields(MaxKVFields+1, 1), time.Hour, ETooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kv.Put(ctx, tc.app, tc.key, KVPut{Value: tc.value, TTL: tc.ttl})
			wantCode(t, err, tc.code)
			if tc.code != "" && tc.app != "" && !strings.Contains(tc.app, "/") && ValidKVKey(tc.key) == nil {
				if _, err := kv.Get(ctx, tc.app, tc.key); ErrorCode(err) != ENotFound {
					t.Errorf("refused put stored something: %v", err)
				}
			}
		})
	}
	t.Run("ErrNamesKept", func(t *testing.T) {
		mustPut(t, kv, "shop", "names", nil, time.Hour)
		// Each field set and deleted leaves a tombstone until the next put.
		var err error
		for i := 0; err == nil && i < MaxKVNames+1; i++ {
			name := fmt.Sprint("f", i)
			if _, err = kv.Patch(ctx, "shop", "names", KVPatch{Set: map[string]json.RawMessage{name: raw("1")}}); err == nil {
				_, err = kv.Patch(ctx, "shop", "names", KVPatch{Delete: []string{name}})
			}
		}
		wantCode(t, err, ETooLarge)
		mustPut(t, kv, "shop", "names", map[string]json.RawMessage{"a": raw("1")}, time.Hour)
		if _, err := kv.Patch(ctx, "shop", "names", KVPatch{Set: map[string]json.RawMessage{"b": raw("1")}}); err != nil {
			t.Errorf("after a put cleared the tombstones: %v", err)
		}
	})
	t.Run("ErrPatchGrowsTooLarge", func(t *testing.T) {
		mustPut(t, kv, "shop", "grow", manyFields(6, 10<<10), time.Hour)
		_, err := kv.Patch(ctx, "shop", "grow", KVPatch{Set: manyFields(1, 10<<10)})
		if ErrorCode(err) != "" { // f0 replaced: same size
			t.Fatalf("replacing a field: %v", err)
		}
		_, err = kv.Patch(ctx, "shop", "grow", KVPatch{Set: map[string]json.RawMessage{"big": raw(`"` + strings.Repeat("x", 10<<10) + `"`)}})
		wantCode(t, err, ETooLarge)
		if got, _ := kv.Get(ctx, "shop", "grow"); got.Value["big"] != nil {
			t.Error("a refused patch was stored")
		}
	})
}

// manyFields returns n fields of about size bytes each.
func manyFields(n, size int) map[string]json.RawMessage {
	out := make(map[string]json.RawMessage, n)
	for i := range n {
		out[fmt.Sprint("f", i)] = raw(`"` + strings.Repeat("x", max(size-2, 0)) + `"`)
	}
	return out
}

// listAll pages through app's keys with List and returns them in order.
func listAll(tb testing.TB, kv *KV, app string, limit int, held func(int) bool) []string {
	tb.Helper()
	var keys []string
	after := KVPos{}
	for range 10000 {
		page, err := kv.List(context.Background(), app, KVList{After: after, Limit: limit, Held: held})
		if err != nil {
			tb.Fatalf("List: %v", err)
		}
		if len(page.Items) > max(limit, 0) {
			tb.Fatalf("page of %d items, limit %d", len(page.Items), limit)
		}
		for _, it := range page.Items {
			keys = append(keys, it.Key)
		}
		if page.Next == nil {
			return keys
		}
		// The cursor survives its text form.
		next, err := ParseKVCursor(page.Next.String())
		if err != nil || next != *page.Next {
			tb.Fatalf("cursor %v → %q → %v, %v", *page.Next, page.Next.String(), next, err)
		}
		after = next
	}
	tb.Fatal("List never ended")
	return nil
}

func kvOrder(app string, keys []string) []string {
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b string) int { return KVPosOf(app, a).Compare(KVPosOf(app, b)) })
	return out
}

func TestKVList(t *testing.T) {
	ctx := context.Background()
	kv, e := newKV(t)
	var live []string
	for i := range 120 {
		key := fmt.Sprintf("key%03d", i)
		ttl := time.Hour
		if i%10 == 0 {
			ttl = time.Minute // expired below
		}
		mustPut(t, kv, "shop", key, map[string]json.RawMessage{"i": raw(fmt.Sprint(i))}, ttl)
		mustPut(t, kv, "shopx", key, map[string]json.RawMessage{"i": raw("0")}, time.Hour)
		switch {
		case i%10 == 0:
		case i%7 == 0:
			if err := kv.Delete(ctx, "shop", key); err != nil {
				t.Fatal(err)
			}
		default:
			live = append(live, key)
		}
	}
	e.now.Advance(2 * time.Minute)
	want := kvOrder("shop", live)
	for _, limit := range []int{1, 7, 100, MaxKVPage} {
		if got := listAll(t, kv, "shop", limit, nil); !slices.Equal(got, want) {
			t.Errorf("limit %d: %d keys, want %d in order", limit, len(got), len(want))
		}
	}
	page, err := kv.List(ctx, "shop", KVList{Values: true, Limit: 5})
	if err != nil || len(page.Items) != 5 || page.Items[0].Value["i"] == nil || page.Next == nil {
		t.Fatalf("with values: %+v, %v", page, err)
	}
	page, _ = kv.List(ctx, "shop", KVList{Limit: 5})
	if page.Items[0].Value != nil {
		t.Errorf("without values: %+v", page.Items[0])
	}
	// Only the partitions held.
	held := func(p int) bool { return p%3 != 0 }
	wantHeld := slices.DeleteFunc(slices.Clone(want), func(k string) bool { return !held(KVPosOf("shop", k).Partition) })
	if got := listAll(t, kv, "shop", 10, held); !slices.Equal(got, wantHeld) {
		t.Errorf("held partitions: %d keys, want %d", len(got), len(wantHeld))
	}
	for _, tc := range []struct {
		name string
		req  KVList
	}{
		{"ErrNegativeLimit", KVList{Limit: -1}},
		{"ErrLimit", KVList{Limit: MaxKVPage + 1}},
		{"ErrValuesLimit", KVList{Limit: MaxKVPageVals + 1, Values: true}},
	} {
		_, err := kv.List(ctx, "shop", tc.req)
		if ErrorCode(err) != EInvalid {
			t.Errorf("%s: %v, want %s", tc.name, err, EInvalid)
		}
	}
	for _, bad := range []string{"!", "AA", "_w8", KVPos{Partition: crdt.Partitions}.String(), KVPos{Key: "a/b"}.String(), strings.Repeat("A", 2*MaxKVKey+1)} {
		if _, err := ParseKVCursor(bad); ErrorCode(err) != EInvalid {
			t.Errorf("ParseKVCursor(%q)=%v, want %s", bad, err, EInvalid)
		}
	}
}

// TestKVListTombstones: a namespace of deleted keys is listed in short pages, each
// reading a bounded number of records, not in one long request.
func TestKVListTombstones(t *testing.T) {
	ctx := context.Background()
	kv, _ := newKV(t)
	for i := range 200 {
		if err := kv.Delete(ctx, "shop", fmt.Sprint("k", i)); err != nil {
			t.Fatal(err)
		}
	}
	page, err := kv.List(ctx, "shop", KVList{Limit: 10})
	if err != nil || len(page.Items) != 0 || page.Next == nil {
		t.Fatalf("first page %+v, %v: want empty with a next page", page, err)
	}
	if got := listAll(t, kv, "shop", 10, nil); len(got) != 0 {
		t.Errorf("listed %q", got)
	}
}

// TestMergeKVPages: pages listed by several nodes, each over its own partitions, merged
// page after page, list every key once, in order, whatever the nodes' page limits.
func TestMergeKVPages(tt *testing.T) {
	rapid.Check(tt, func(t *rapid.T) {
		kv, _ := newKV(tt)
		keys := rapid.SliceOfNDistinct(rapid.StringMatching(`[a-z0-9]{1,6}`), 0, 60, rapid.ID).Draw(t, "keys")
		for _, k := range keys {
			if _, err := kv.Put(context.Background(), "shop", k, KVPut{Value: map[string]json.RawMessage{"a": raw("1")}, TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
		}
		nodes := rapid.IntRange(1, 4).Draw(t, "nodes")
		owner := func(p int) int { return p % nodes }
		limit := rapid.IntRange(1, 10).Draw(t, "limit")
		var got []string
		after := KVPos{}
		for range 1000 {
			pages := make([]KVPage, nodes)
			for i := range pages {
				l := rapid.IntRange(1, 10).Draw(t, "node limit")
				var err error
				pages[i], err = kv.List(context.Background(), "shop", KVList{After: after, Limit: l, Held: func(p int) bool { return owner(p) == i }})
				if err != nil {
					t.Fatal(err)
				}
			}
			page, err := MergeKVPages("shop", limit, false, pages)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Items) > limit {
				t.Fatalf("merged page of %d, limit %d", len(page.Items), limit)
			}
			for _, it := range page.Items {
				got = append(got, it.Key)
			}
			if page.Next == nil {
				break
			}
			if page.Next.Compare(after) <= 0 {
				t.Fatalf("next %v not after %v", *page.Next, after)
			}
			after = *page.Next
		}
		if want := kvOrder("shop", keys); !slices.Equal(got, want) {
			t.Fatalf("listed %q, want %q", got, want)
		}
	})
}
