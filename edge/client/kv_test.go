package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/edgetest"
)

func TestKV(t *testing.T) {
	n := edgetest.Start(t, "client-test", nil)
	key := edgetest.CreateApp(t, n, "shop")
	c, err := client.NewService(client.Config{Endpoints: []string{"http://" + n.HTTPAddr()}, DisallowUnknownFields: true}, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Client().CloseIdleConnections)
	ctx := context.Background()

	it, err := c.KVPut(ctx, "tok:1", map[string]json.RawMessage{"cart": json.RawMessage(`[1]`), "user": json.RawMessage(`"al"`)}, 1500*time.Millisecond)
	if err != nil || it.Key != "tok:1" || string(it.Value["cart"]) != "[1]" {
		t.Fatalf("KVPut=%+v, %v", it, err)
	}
	if d := time.Until(it.ExpiresAt); d <= time.Second || d > 2*time.Second {
		t.Errorf("ttl 1.5s: expires in %s, want 2s (rounded up)", d)
	}
	if c.Client().Bookmark() == "" {
		t.Error("no bookmark kept after a write")
	}
	it, err = c.KVPatch(ctx, "tok:1", map[string]json.RawMessage{"theme": json.RawMessage(`"dark"`)}, []string{"user"}, time.Hour)
	if err != nil || len(it.Value) != 2 || it.Value["user"] != nil || time.Until(it.ExpiresAt) < 59*time.Minute {
		t.Fatalf("KVPatch=%+v, %v", it, err)
	}
	if it, err = c.KVGet(ctx, "tok:1"); err != nil || string(it.Value["theme"]) != `"dark"` {
		t.Fatalf("KVGet=%+v, %v", it, err)
	}
	page, err := c.KVList(ctx, "", 10, true)
	if err != nil || len(page.Items) != 1 || page.Items[0].Key != "tok:1" || page.Next != "" {
		t.Fatalf("KVList=%+v, %v", page, err)
	}
	if err := c.KVDelete(ctx, "tok:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KVGet(ctx, "tok:1"); !errors.Is(err, client.ErrNotFound) {
		t.Errorf("KVGet after delete: %v, want ErrNotFound", err)
	}
	_, err = c.KVPut(ctx, "tok:1", nil, time.Minute)
	wantCode(t, "KVPut after delete", err, client.ErrKeyDeleted)
	_, err = c.KVPatch(ctx, "absent", map[string]json.RawMessage{"a": json.RawMessage("1")}, nil, 0)
	wantCode(t, "KVPatch of an absent key", err, client.ErrNotFound)
	_, err = c.KVGet(ctx, "a b")
	wantCode(t, "KVGet of a bad key", err, client.ErrInvalidArgument)
}

// TestKVDiff: only new and changed fields are set (JSON compared compacted), and only
// fields that went are deleted.
func TestKVDiff(t *testing.T) {
	base := map[string]json.RawMessage{"same": json.RawMessage(`{"a": 1}`), "changed": json.RawMessage(`1`), "gone": json.RawMessage(`true`)}
	now := map[string]json.RawMessage{"same": json.RawMessage(`{"a":1}`), "changed": json.RawMessage(`2`), "new": json.RawMessage(`"x"`)}
	set, del := client.KVDiff(base, now)
	if len(set) != 2 || string(set["changed"]) != `2` || string(set["new"]) != `"x"` {
		t.Errorf("set = %s, want changed and new only", set)
	}
	if len(del) != 1 || del[0] != "gone" {
		t.Errorf("del = %q, want [gone]", del)
	}
	if set, del := client.KVDiff(nil, nil); len(set) != 0 || len(del) != 0 {
		t.Errorf("KVDiff(nil, nil) = %v, %v; want nothing", set, del)
	}
}
