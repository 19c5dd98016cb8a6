package cluster

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

func TestProtocolRangeCommon(t *testing.T) {
	for _, tc := range []struct {
		a, b ProtocolRange
		want uint8 // 0: none
	}{
		{ProtocolRange{5, 5}, ProtocolRange{5, 5}, 5},
		{ProtocolRange{5, 6}, ProtocolRange{5, 5}, 5},
		{ProtocolRange{5, 6}, ProtocolRange{5, 6}, 6},
		{ProtocolRange{5, 6}, ProtocolRange{6, 7}, 6},
		{ProtocolRange{4, 9}, ProtocolRange{6, 7}, 7},
		{ProtocolRange{5, 5}, ProtocolRange{6, 6}, 0},
		{ProtocolRange{6, 7}, ProtocolRange{3, 5}, 0},
	} {
		got, ok := tc.a.Common(tc.b)
		back, okBack := tc.b.Common(tc.a)
		if !ok {
			got = 0
		}
		if !okBack {
			back = 0
		}
		if got != tc.want || back != tc.want {
			t.Errorf("%s.Common(%s) = %d, reverse %d; want %d", tc.a, tc.b, got, back, tc.want)
		}
	}
	if r := Supported(); r.Min != MinProtocolVersion || r.Max != ProtocolVersion || !r.Valid() {
		t.Errorf("Supported() = %s, want [%d,%d]", r, MinProtocolVersion, ProtocolVersion)
	}
}

// TestProtocolVersions: a message is encoded in its Version (0: ProtocolVersion), decoded
// with the version it came in, and a version outside Supported is neither encoded nor
// read; with the fake next version, both versions round-trip and a handler answers in its
// request's version.
func TestProtocolVersions(t *testing.T) {
	next := uint8(ProtocolVersion + 1)
	b, err := DigestRequest{Branches: make([]uint64, crdt.DigestBranches)}.MarshalBinary()
	if err != nil || b[0] != ProtocolVersion {
		t.Fatalf("encode with Version 0: first byte %d, err %v; want %d", b[0], err, ProtocolVersion)
	}
	var m DigestRequest
	if err := m.UnmarshalBinary(b); err != nil || m.Version != ProtocolVersion {
		t.Fatalf("decode: Version %d, err %v", m.Version, err)
	}
	if _, err := (PushRequest{Version: next}).MarshalBinary(); err == nil {
		t.Errorf("encoded version %d, which this build does not speak", next)
	}
	b[0] = next
	if err := m.UnmarshalBinary(b); !errors.Is(err, ErrInvalidMessage) {
		t.Errorf("decoding version %d: %v, want ErrInvalidMessage", next, err)
	}

	fakeNext.Store(true)
	defer fakeNext.Store(false)
	db, err := storage.Open(filepath.Join(t.TempDir(), "v.db"), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	r := NewReplicator(Config{DB: db, Transport: &replyTransport{}})
	r.Start()
	defer r.Close()
	for _, v := range []uint8{ProtocolVersion, next} {
		reqs := map[string][]byte{}
		for kind, msg := range map[string]interface{ MarshalBinary() ([]byte, error) }{
			"push":   PushRequest{Version: v, From: 9},
			"digest": DigestRequest{Version: v, Branches: make([]uint64, crdt.DigestBranches)},
			"leaves": LeavesRequest{Version: v, Leaves: []LeafPairs{{Leaf: 1}}},
		} {
			b, err := msg.MarshalBinary()
			if err != nil || b[0] != v {
				t.Fatalf("%s in version %d: first byte %d, err %v", kind, v, b[0], err)
			}
			reqs[kind] = b
		}
		for kind, b := range reqs {
			out, err := ServeMessage(context.Background(), r, nil, "p", 0, kind, b)
			if err != nil || len(out) == 0 || out[0] != v {
				t.Errorf("%s in version %d: reply %x, err %v; want a reply in version %d", kind, v, out, err, v)
			}
		}
	}
}
