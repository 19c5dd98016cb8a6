package functions

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// meter is a UsageMeter whose readings the test sets.
type meter map[string]int64

func (m meter) AppUsage(app string) Usage { return Usage{Bytes: m[app]} }

// TestQuota: an app at its quota cannot add to what it stores — no new key-value key or
// larger value, tombstone of a key not held, subject or session, no session data that
// grows — but can always read, shrink and delete, revoke its known subjects, and another
// app, or a registered user, is not held back.
func TestQuota(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	used := meter{}
	q := &Quota{Meter: used, Bytes: 100_000}
	kv := &KV{Store: e.store, Lister: e.store, Clock: e.clock, Quota: q}
	e.sessions.Quota = q
	big := map[string]json.RawMessage{"v": json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)}
	small := map[string]json.RawMessage{"v": json.RawMessage(`"x"`)}

	// Below the quota everything works.
	mustPut(t, kv, "shop", "cart", big, time.Hour)
	alice, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	user, p := e.mustLogin(t, e.mustRegister(t, "bob", "correct horse").Username, "correct horse")

	used["shop"] = q.Bytes - 10 // at the quota, bar ten bytes
	for name, err := range map[string]error{
		"a new key": func() error { _, err := kv.Put(ctx, "shop", "new", KVPut{Value: small, TTL: time.Hour}); return err }(),
		"a value that grows": func() error {
			_, err := kv.Patch(ctx, "shop", "cart", KVPatch{Set: map[string]json.RawMessage{"w": json.RawMessage(`"grown"`)}})
			return err
		}(),
		"a tombstone of a key not held": kv.Delete(ctx, "shop", "never-written"),
		"a new subject's session": func() error {
			_, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "mallory"})
			return err
		}(),
		"another session of a known subject": func() error {
			_, err := e.sessions.CreateForSubject(ctx, "shop", SubjectLogin{Subject: "alice"})
			return err
		}(),
		"revoking a subject not held": e.sessions.RevokeSubject(ctx, "shop", "nobody-here"),
		"session data that grows": func() error {
			_, err := e.sessions.PatchServiceSession(ctx, "shop", alice.ID, DataPatch{Set: big})
			return err
		}(),
	} {
		if ErrorCode(err) != EQuotaExceeded {
			t.Errorf("%s at the quota: %v, want %s", name, err, EQuotaExceeded)
		}
	}
	if _, err := kv.Get(ctx, "shop", "new"); ErrorCode(err) != ENotFound {
		t.Errorf("a refused put was stored: %v", err)
	}
	if s, err := e.sessions.ServiceSession(ctx, "shop", alice.ID); err != nil || len(s.Data) != 0 {
		t.Errorf("a refused patch was stored: %+v, %v", s.Data, err)
	}

	// What adds nothing still works, and so does deleting a stored key whose tombstone
	// is larger than its value.
	mustPut(t, kv, "blog", "empty", map[string]json.RawMessage{}, time.Hour)
	used["blog"] = q.Bytes
	if err := kv.Delete(ctx, "blog", "empty"); err != nil {
		t.Errorf("deleting a stored key with an empty value at the quota: %v", err)
	}
	used["blog"] = 0
	if _, err := kv.Put(ctx, "shop", "cart", KVPut{Value: small, TTL: time.Hour}); err != nil {
		t.Errorf("a put that shrinks a value: %v", err)
	}
	if _, err := kv.Get(ctx, "shop", "cart"); err != nil {
		t.Errorf("a read: %v", err)
	}
	if err := kv.Delete(ctx, "shop", "cart"); err != nil {
		t.Errorf("deleting a key: %v", err)
	}
	if err := e.sessions.RevokeSubject(ctx, "shop", "alice"); err != nil {
		t.Errorf("revoking a known subject: %v", err)
	}
	// Another app, and a registered user's session data, are not held back.
	mustPut(t, kv, "blog", "new", big, time.Hour)
	if _, err := e.sessions.PatchData(ctx, p, DataPatch{Set: big}); err != nil {
		t.Errorf("a registered user's patch (%s): %v", user.ID, err)
	}

	// Without a quota, nothing is bounded.
	used["shop"] = 1 << 40
	kv.Quota, e.sessions.Quota = nil, nil
	mustPut(t, kv, "shop", "unbounded", big, time.Hour)
}

// TestQuotaClaims: writes not yet committed hold their growth against the quota, so that
// a burst in one group commit, which all read the same usage, cannot pass it; a function
// run again replaces its claim, and a released claim frees its room.
func TestQuotaClaims(t *testing.T) {
	q := &Quota{Meter: meter{"shop": 400}, Bytes: 1000}
	a, b := q.claim("shop"), q.claim("shop")
	if err := a.allows(500); err != nil {
		t.Fatalf("a: %v", err)
	}
	if err := b.allows(200); ErrorCode(err) != EQuotaExceeded {
		t.Errorf("b beside a's claim: %v, want %s", err, EQuotaExceeded)
	}
	if err := q.claim("blog").allows(900); err != nil {
		t.Errorf("another app: %v", err)
	}
	if err := a.allows(100); err != nil { // run again: replaces its 500
		t.Fatalf("a again: %v", err)
	}
	if err := b.allows(500); err != nil {
		t.Errorf("b once a claims 100: %v", err)
	}
	a.release()
	b.release()
	if len(q.pending) != 1 || q.pending["blog"] != 900 { // the blog claim is not released
		t.Errorf("claims left after release: %v", q.pending)
	}
	delete(q.pending, "blog")
	if len(q.pending) != 0 {
		t.Errorf("claims left after release: %v", q.pending)
	}
	var none *Quota
	if c := none.claim("shop"); c.allows(1<<40) != nil {
		t.Error("a nil quota refused")
	}
}

// ownQuotas is an AppQuotas whose answers the test sets.
type ownQuotas map[string]int64

func (o ownQuotas) AppQuota(app string) (int64, bool) {
	b, ok := o[app]
	return b, ok
}

// TestQuotaOwn: an app's own quota replaces the nodes' for that app alone — higher,
// lower, none (negative) or nothing more (0) — also where the nodes set none.
func TestQuotaOwn(t *testing.T) {
	used := meter{"big": 5000, "frozen": 10, "free": 1 << 40, "other": 900}
	own := ownQuotas{"big": 10_000, "frozen": 0, "free": -1}
	for _, bytes := range []int64{1000, 0} {
		q := &Quota{Meter: used, Bytes: bytes, Own: own}
		for _, tc := range []struct {
			app    string
			growth int64
			ok     bool
		}{
			{"big", 4000, true},        // over the nodes' 1,000, under its own
			{"big", 6000, false},       // over its own
			{"frozen", 1, false},       // its own is 0
			{"frozen", -5, true},       // shrinking always works
			{"free", 1 << 30, true},    // its own is none
			{"other", 200, bytes == 0}, // the nodes' own
		} {
			c := q.claim(tc.app)
			err := c.allows(tc.growth)
			if (err == nil) != tc.ok || (err != nil && ErrorCode(err) != EQuotaExceeded) {
				t.Errorf("nodes' quota %d, %s adding %d: %v, want allowed %v", bytes, tc.app, tc.growth, err, tc.ok)
			}
			c.release()
		}
	}
}
