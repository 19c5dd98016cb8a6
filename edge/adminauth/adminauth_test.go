package adminauth

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
	"unsafe"
)

var (
	keyA = bytes.Repeat([]byte{0xa}, 32)
	keyB = bytes.Repeat([]byte{0xb}, 32)
	t0   = time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
)

func fixed(t time.Time) func() time.Time { return func() time.Time { return t } }

func TestVerify(t *testing.T) {
	const target = "/v1/admin/backup?x=1"
	for _, tc := range []struct {
		name   string
		keys   [][]byte // the node's
		node   string   // signed for (default: the node's identity)
		signer []byte
		signAt time.Time
		method string // the request as received, signed as GET target with no body
		target string
		body   []byte
		want   error
	}{
		{name: "OK", keys: [][]byte{keyA}, signer: keyA, signAt: t0},
		{name: "OKOlderKey", keys: [][]byte{keyB, keyA}, signer: keyA, signAt: t0},
		{name: "OKSkewWithinWindow", keys: [][]byte{keyA}, signer: keyA, signAt: t0.Add(-Window + time.Second)},
		{name: "ErrWrongKey", keys: [][]byte{keyA}, signer: keyB, signAt: t0, want: ErrSignature},
		{name: "ErrStale", keys: [][]byte{keyA}, signer: keyA, signAt: t0.Add(-Window - time.Second), want: ErrStale},
		{name: "ErrFuture", keys: [][]byte{keyA}, signer: keyA, signAt: t0.Add(Window + time.Second), want: ErrStale},
		{name: "ErrTamperedPath", keys: [][]byte{keyA}, signer: keyA, signAt: t0, target: "/v1/admin/other?x=1", want: ErrSignature},
		{name: "ErrTamperedQuery", keys: [][]byte{keyA}, signer: keyA, signAt: t0, target: "/v1/admin/backup?x=2", want: ErrSignature},
		{name: "ErrTamperedMethod", keys: [][]byte{keyA}, signer: keyA, signAt: t0, method: "POST", want: ErrSignature},
		{name: "ErrTamperedBody", keys: [][]byte{keyA}, signer: keyA, signAt: t0, body: []byte("{}"), want: ErrSignature},
		{name: "ErrOtherNode", keys: [][]byte{keyA}, node: "n2", signer: keyA, signAt: t0, want: ErrOtherNode},
		{name: "ErrNameOnly", keys: [][]byte{keyA}, node: "n1", signer: keyA, signAt: t0, want: ErrOtherNode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := t0.Add(-2 * Window) // started well before
			v := NewVerifier(tc.keys, "n1", func() time.Time { return now })
			now = t0
			node := v.Identity()
			if tc.node != "" {
				node = tc.node
			}
			auth := Sign(tc.signer, node, "GET", target, nil, tc.signAt)
			method, tgt := "GET", target
			if tc.method != "" {
				method = tc.method
			}
			if tc.target != "" {
				tgt = tc.target
			}
			if err := v.Verify(method, tgt, tc.body, auth); !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestVerifyReplay(t *testing.T) {
	now := t0
	v := NewVerifier([][]byte{keyA}, "n1", func() time.Time { return now })
	auth := Sign(keyA, v.Identity(), "GET", "/v1/admin/backup", nil, now)
	if err := v.Verify("GET", "/v1/admin/backup", nil, auth); err != nil {
		t.Fatal(err)
	}
	if err := v.Verify("GET", "/v1/admin/backup", nil, auth); !errors.Is(err, ErrReplayed) {
		t.Errorf("replay within the window: %v, want %v", err, ErrReplayed)
	}
	now = now.Add(Window + time.Second)
	if err := v.Verify("GET", "/v1/admin/backup", nil, auth); !errors.Is(err, ErrStale) {
		t.Errorf("replay after the window: %v, want %v", err, ErrStale)
	}
	// A fresh signature of the same request is accepted.
	if err := v.Verify("GET", "/v1/admin/backup", nil, Sign(keyA, v.Identity(), "GET", "/v1/admin/backup", nil, now)); err != nil {
		t.Errorf("fresh signature: %v", err)
	}
}

// TestVerifyRestarted: a node that restarts forgets the nonces it accepted, and its
// identity changes with it: a request signed for it before, even within the window and
// with the clocks skewed either way, is refused; one signed for its new identity is
// accepted.
func TestVerifyRestarted(t *testing.T) {
	now := t0
	v := NewVerifier([][]byte{keyA}, "n1", func() time.Time { return now })
	for _, skew := range []time.Duration{0, 30 * time.Second, -30 * time.Second} {
		auth := Sign(keyA, v.Identity(), "GET", "/x", nil, now.Add(skew))
		if err := v.Verify("GET", "/x", nil, auth); err != nil {
			t.Fatal(err)
		}
		restarted := NewVerifier([][]byte{keyA}, "n1", func() time.Time { return now })
		if err := restarted.Verify("GET", "/x", nil, auth); !errors.Is(err, ErrOtherNode) {
			t.Errorf("skew %v: replay on the restarted node: %v, want %v", skew, err, ErrOtherNode)
		}
		if err := restarted.Verify("GET", "/x", nil, Sign(keyA, restarted.Identity(), "GET", "/x", nil, now.Add(skew))); err != nil {
			t.Errorf("skew %v: a request signed for the restarted node: %v", skew, err)
		}
	}
}

func TestVerifyMalformed(t *testing.T) {
	v := NewVerifier([][]byte{keyA}, "n1", fixed(t0))
	good := Sign(keyA, v.Identity(), "GET", "/x", nil, t0)
	for name, auth := range map[string]string{
		"ErrEmpty":       "",
		"ErrBearer":      "Bearer abc.def.ghi",
		"ErrNoFields":    Scheme + " ",
		"ErrBadTime":     strings.Replace(good, "t=", "t=x", 1),
		"ErrShortNonce":  strings.Replace(good, "n=", "n=ab,x=", 1),
		"ErrBadSigBytes": good[:len(good)-4],
		"ErrNotBase64":   good + "!!",
		"ErrNoNode":      strings.Replace(good, ",d=", ",x=", 1),
		"ErrNodeBase64":  strings.Replace(good, ",d=", ",d=!", 1),
	} {
		t.Run(name, func(t *testing.T) {
			err := v.Verify("GET", "/x", nil, auth)
			if !errors.Is(err, ErrMissing) && !errors.Is(err, ErrMalformed) {
				t.Errorf("Verify(%q) = %v, want %v or %v", auth, err, ErrMissing, ErrMalformed)
			}
		})
	}
}

func TestVerifyBusy(t *testing.T) {
	v := NewVerifier([][]byte{keyA}, "n1", fixed(t0))
	for i := range maxNonces {
		if err := v.Verify("GET", "/x", nil, Sign(keyA, v.Identity(), "GET", "/x", nil, t0)); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if err := v.Verify("GET", "/x", nil, Sign(keyA, v.Identity(), "GET", "/x", nil, t0)); !errors.Is(err, ErrBusy) {
		t.Errorf("request past the bound: %v, want %v", err, ErrBusy)
	}
}

func TestSetKeys(t *testing.T) {
	v := NewVerifier([][]byte{keyA}, "n1", fixed(t0))
	v.SetKeys([][]byte{keyB})
	for signer, want := range map[string]error{"A": ErrSignature, "B": nil} {
		k := map[string][]byte{"A": keyA, "B": keyB}[signer]
		if err := v.Verify("GET", "/x", nil, Sign(k, v.Identity(), "GET", "/x", nil, t0)); !errors.Is(err, want) {
			t.Errorf("signed with %s after rotation to B: %v, want %v", signer, err, want)
		}
	}
}

// TestVerifyReusedBuffer: a server (fasthttp) hands Verify strings that alias a buffer it
// reuses for the next request. The nonces Verify remembers must not change with it (a
// remembered nonce that turned into the next request's made that request a "replay").
func TestVerifyReusedBuffer(t *testing.T) {
	v := NewVerifier([][]byte{keyA}, "n1", fixed(t0))
	buf := []byte(Sign(keyA, v.Identity(), "GET", "/x", nil, t0))
	if err := v.Verify("GET", "/x", nil, unsafe.String(&buf[0], len(buf))); err != nil {
		t.Fatal(err)
	}
	var before []string
	for n := range v.nonces {
		before = append(before, strings.Clone(n))
	}
	copy(buf, Sign(keyA, v.Identity(), "GET", "/x", nil, t0)) // the next request, in the same buffer
	for n := range v.nonces {
		if n != before[0] {
			t.Fatalf("remembered nonce changed from %s to %s with the caller's buffer", before[0], n)
		}
	}
	if err := v.Verify("GET", "/x", nil, unsafe.String(&buf[0], len(buf))); err != nil {
		t.Errorf("the next request through the reused buffer: %v", err)
	}
}
