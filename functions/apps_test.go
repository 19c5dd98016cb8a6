package functions

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

func TestValidAppName(t *testing.T) {
	for _, name := range []string{"ab", "shop", "shop-eu-1", "0day", strings.Repeat("a", MaxAppName)} {
		if err := ValidAppName(name); err != nil {
			t.Errorf("ValidAppName(%q) = %v, want nil", name, err)
		}
	}
	for _, name := range []string{"", "a", "-shop", "Shop", "shop_1", "shop.eu", "shop/x", "shöp", "sh op", strings.Repeat("a", MaxAppName+1)} {
		if err := ValidAppName(name); ErrorCode(err) != EInvalid {
			t.Errorf("ValidAppName(%q) = %v, want %s", name, err, EInvalid)
		}
	}
}

func TestAPIKey_RoundTrip(t *testing.T) {
	k := APIKey{App: "shop-eu"}
	for i := range k.Secret {
		k.Secret[i] = byte(i * 7)
	}
	for _, bm := range []crdt.Bookmark{{}, bookmarkOf(crdt.Timestamp{Wall: testEpoch.UnixNano(), Logical: 3, Node: 9})} {
		k.Bookmark = bm
		s := k.String()
		if !IsAPIKey(s) || !strings.HasPrefix(s, "sdapp_shop-eu_") {
			t.Fatalf("String() = %q, want sdapp_shop-eu_…", s)
		}
		got, err := ParseAPIKey(s)
		if err != nil {
			t.Fatalf("ParseAPIKey(%q): %v", s, err)
		}
		if got.App != k.App || got.Secret != k.Secret || !got.Bookmark.Equal(k.Bookmark) {
			t.Errorf("ParseAPIKey(%q) = %+v, want %+v", s, got, k)
		}
		if string(got.KeyHash()) != string(k.KeyHash()) {
			t.Errorf("KeyHash differs with the bookmark: it must cover the name and the secret only")
		}
	}
	other := k
	other.App = "shop-us"
	if string(other.KeyHash()) == string(k.KeyHash()) {
		t.Errorf("KeyHash is the same for two apps with one secret: it must bind the name")
	}
}

func bookmarkOf(ts crdt.Timestamp) crdt.Bookmark {
	var b crdt.Bookmark
	b.Add(ts)
	return b
}

func TestParseAPIKey_Malformed(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	bm := bookmarkOf(crdt.Timestamp{Wall: testEpoch.UnixNano(), Node: 9}).String()
	for _, tc := range []struct{ name, key string }{
		{"ErrEmpty", ""},
		{"ErrNoPrefix", "shop_" + hex64},
		{"ErrNoName", "sdapp__" + hex64},
		{"ErrBadName", "sdapp_Shop_" + hex64},
		{"ErrNoSecret", "sdapp_shop"},
		{"ErrShortSecret", "sdapp_shop_" + hex64[:62]},
		{"ErrLongSecret", "sdapp_shop_" + hex64 + "ab"},
		{"ErrNotHex", "sdapp_shop_" + strings.Repeat("zz", 32)},
		{"ErrEmptyBookmark", "sdapp_shop_" + hex64 + "."},
		{"ErrBadBookmark", "sdapp_shop_" + hex64 + ".!!"},
		{"ErrTwoBookmarks", "sdapp_shop_" + hex64 + "." + bm + "," + bm},
		{"ErrHuge", "sdapp_shop_" + hex64 + "." + strings.Repeat("A", 1<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAPIKey(tc.key)
			wantCode(t, err, EUnauthorized)
		})
	}
}

func TestApps(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	a, key, err := e.apps.Create(ctx, "shop")
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if a.Name != "shop" || a.Revoked || !a.CreatedAt.Equal(testEpoch) {
		t.Errorf("Create = %+v, want shop created at %s", a, testEpoch)
	}
	if key.Bookmark.IsZero() {
		t.Errorf("the key carries no bookmark of its creation")
	}
	// The store keeps a hash, never the secret.
	rec := e.store.record(crdt.AppKey("shop"))
	if v, _ := rec.Get(crdt.FieldAppKey); strings.Contains(string(v), string(key.Secret[:])) {
		t.Fatalf("the app's record holds the secret")
	}

	t.Run("OK", func(t *testing.T) {
		parsed, err := ParseAPIKey(key.String())
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.apps.Authenticate(ctx, parsed)
		if err != nil || got != "shop" {
			t.Fatalf("Authenticate = %q, %v; want shop", got, err)
		}
	})
	t.Run("ErrWrongSecret", func(t *testing.T) {
		k := key
		k.Secret[0] ^= 1
		_, err := e.apps.Authenticate(ctx, k)
		wantCode(t, err, EUnauthorized)
	})
	t.Run("ErrUnknownApp", func(t *testing.T) {
		k := key
		k.App = "other"
		_, err := e.apps.Authenticate(ctx, k)
		wantCode(t, err, EUnauthorized)
	})
	t.Run("ErrExists", func(t *testing.T) {
		_, _, err := e.apps.Create(ctx, "shop")
		wantCode(t, err, EConflict)
	})
	t.Run("ErrBadName", func(t *testing.T) {
		_, _, err := e.apps.Create(ctx, "Shop!")
		wantCode(t, err, EInvalid)
		_, err = e.apps.Revoke(ctx, "Shop!")
		wantCode(t, err, EInvalid)
	})
	t.Run("ErrRevokeUnknown", func(t *testing.T) {
		_, err := e.apps.Revoke(ctx, "nobody")
		wantCode(t, err, ENotFound)
	})
	t.Run("Revoke", func(t *testing.T) {
		e.now.Advance(time.Second)
		r, err := e.apps.Revoke(ctx, "shop")
		if err != nil || !r.Revoked || r.RevokedAt == nil || !r.RevokedAt.Equal(testEpoch.Add(time.Second)) {
			t.Fatalf("Revoke = %+v, %v; want revoked at %s", r, err, testEpoch.Add(time.Second))
		}
		if _, err := e.apps.Authenticate(ctx, key); err != ErrAppRevoked {
			t.Errorf("Authenticate after Revoke = %v, want ErrAppRevoked", err)
		}
		// Again: nothing changes, not even the time.
		e.now.Advance(time.Second)
		again, err := e.apps.Revoke(ctx, "shop")
		if err != nil || !again.RevokedAt.Equal(*r.RevokedAt) {
			t.Errorf("second Revoke = %+v, %v; want it as the first left it", again, err)
		}
		// A late write of the creation (replication of an old state) does not revive it.
		e.store.merge(crdt.AppKey("shop"), crdt.NewApp(key.KeyHash(), key.Bookmark.Marks()[0]))
		if _, err := e.apps.Authenticate(ctx, key); err != ErrAppRevoked {
			t.Errorf("Authenticate after a late creation = %v, want ErrAppRevoked", err)
		}
		// The name is never reused.
		_, _, err = e.apps.Create(ctx, "shop")
		wantCode(t, err, EConflict)
	})
	t.Run("List", func(t *testing.T) {
		if _, _, err := e.apps.Create(ctx, "blog"); err != nil {
			t.Fatal(err)
		}
		as, err := e.apps.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) != 2 || as[0].Name != "blog" || as[0].Revoked || as[1].Name != "shop" || !as[1].Revoked {
			t.Errorf("List = %+v, want blog, then shop revoked", as)
		}
		got, err := e.apps.Get(ctx, "blog")
		if err != nil || got.Name != "blog" {
			t.Errorf("Get(blog) = %+v, %v", got, err)
		}
		_, err = e.apps.Get(ctx, "nope")
		wantCode(t, err, ENotFound)
	})
}

// TestApps_ConcurrentCreation: two nodes that had not heard of each other create one
// name; once they meet, the earlier creation's key works and the other's does not, on
// both.
func TestApps_ConcurrentCreation(t *testing.T) {
	ctx := context.Background()
	a, b := newTestEnv(t), newTestEnv(t)
	b.now.Advance(time.Millisecond)
	_, ka, err := a.apps.Create(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	_, kb, err := b.apps.Create(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := a.store.record(crdt.AppKey("shop")), b.store.record(crdt.AppKey("shop"))
	a.store.merge(crdt.AppKey("shop"), rb)
	b.store.merge(crdt.AppKey("shop"), ra)
	for _, e := range []*testEnv{a, b} {
		if _, err := e.apps.Authenticate(ctx, ka); err != nil {
			t.Errorf("the earlier creation's key: %v, want it accepted", err)
		}
		_, err := e.apps.Authenticate(ctx, kb)
		wantCode(t, err, EUnauthorized)
	}
}

func TestApps_Bound(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	for i := range MaxApps {
		e.store.merge(crdt.AppKey("app-"+strconv.Itoa(i)), crdt.NewApp([]byte("h"), e.clock.Next()))
	}
	_, _, err := e.apps.Create(ctx, "one-more")
	wantCode(t, err, EConflict)
}

// TestApps_Rotate: a rotation adds a key that authenticates the same app at once; the
// older keys keep working through the grace and not after it, on any node the records
// reach, whatever order they arrive in; and the rotation's refusals.
func TestApps_Rotate(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	_, first, err := e.apps.Create(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	e.now.Advance(time.Second)
	a, second, err := e.apps.Rotate(ctx, "shop", time.Hour, false)
	if err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	if second.Secret == first.Secret || second.Bookmark.IsZero() {
		t.Fatalf("the new key reuses the secret or carries no bookmark")
	}
	retires := testEpoch.Add(time.Second + time.Hour)
	if len(a.Keys) != 2 || a.Keys[0].ID != "0" || a.Keys[0].RetiresAt == nil || !a.Keys[0].RetiresAt.Equal(retires) || a.Keys[1].RetiresAt != nil {
		t.Fatalf("Rotate = %+v, want the first key retiring at %s and the new one not", a, retires)
	}
	for name, k := range map[string]APIKey{"first": first, "second": second} {
		if got, err := e.apps.Authenticate(ctx, k); err != nil || got != "shop" {
			t.Errorf("the %s key within the grace: %q, %v; want shop", name, got, err)
		}
	}
	e.now.Advance(time.Hour - time.Nanosecond)
	if _, err := e.apps.Authenticate(ctx, first); err != nil {
		t.Errorf("the first key a moment before it retires: %v", err)
	}
	e.now.Advance(time.Nanosecond)
	_, err = e.apps.Authenticate(ctx, first)
	wantCode(t, err, EUnauthorized)
	if got, err := e.apps.Authenticate(ctx, second); err != nil || got != "shop" {
		t.Errorf("the new key after the grace: %q, %v", got, err)
	}
	if a, err := e.apps.Get(ctx, "shop"); err != nil || len(a.Keys) != 1 || a.Keys[0].ID == "0" {
		t.Errorf("Get after the grace = %+v, %v; want the new key only", a, err)
	}

	t.Run("ShorterGraceLaterWins", func(t *testing.T) {
		// A rotation without grace retires every older key at once, also one a
		// rotation before gave a longer grace.
		_, third, err := e.apps.Rotate(ctx, "shop", 24*time.Hour, false)
		if err != nil {
			t.Fatal(err)
		}
		_, fourth, err := e.apps.Rotate(ctx, "shop", 0, false)
		if err != nil {
			t.Fatal(err)
		}
		for name, k := range map[string]APIKey{"second": second, "third": third} {
			_, err := e.apps.Authenticate(ctx, k)
			wantCode(t, err, EUnauthorized)
			if err == ErrAppRevoked {
				t.Errorf("the %s key: %v, want a retired key, not a revoked app", name, err)
			}
		}
		if _, err := e.apps.Authenticate(ctx, fourth); err != nil {
			t.Errorf("the newest key: %v", err)
		}
	})
	t.Run("AnyOrderOnAnotherNode", func(t *testing.T) {
		// The rotation arrives before the creation: the view is the same once both have.
		o := newTestEnv(t)
		o.now.Advance(2 * time.Hour)
		rec := e.store.record(crdt.AppKey("shop"))
		for _, name := range rec.Names() {
			f, _ := rec.Field(name)
			var part crdt.Map
			part.Claim(name, f.Value, f.TS)
			o.store.merge(crdt.AppKey("shop"), part)
		}
		got, err := o.apps.Get(ctx, "shop")
		want, _ := e.apps.Get(ctx, "shop")
		if err != nil || len(got.Keys) != len(want.Keys) || got.Keys[0].ID != want.Keys[0].ID {
			t.Errorf("another node: %+v, %v; want %+v", got, err, want)
		}
	})
	t.Run("Errors", func(t *testing.T) {
		_, _, err := e.apps.Rotate(ctx, "shop", -time.Second, false)
		wantCode(t, err, EInvalid)
		_, _, err = e.apps.Rotate(ctx, "shop", MaxAppKeyGrace+time.Second, false)
		wantCode(t, err, EInvalid)
		_, _, err = e.apps.Rotate(ctx, "nobody", 0, false)
		wantCode(t, err, ENotFound)
		_, _, err = e.apps.Rotate(ctx, "Shop!", 0, false)
		wantCode(t, err, EInvalid)
	})
	t.Run("ErrTooManyKeys", func(t *testing.T) {
		if _, _, err := e.apps.Create(ctx, "busy"); err != nil {
			t.Fatal(err)
		}
		for i := 1; i < MaxAppKeys; i++ {
			if _, _, err := e.apps.Rotate(ctx, "busy", 0, false); err != nil {
				t.Fatalf("rotation %d: %v", i, err)
			}
		}
		_, _, err := e.apps.Rotate(ctx, "busy", 0, false)
		wantCode(t, err, EConflict)
	})
	t.Run("ErrRevoked", func(t *testing.T) {
		if _, err := e.apps.Revoke(ctx, "shop"); err != nil {
			t.Fatal(err)
		}
		_, _, err := e.apps.Rotate(ctx, "shop", 0, false)
		wantCode(t, err, EConflict)
	})
}
