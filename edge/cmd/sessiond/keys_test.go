package main_test

// sessiond keys with the real binary: a rotation through one node of a two-node cluster
// reaches the other, tokens of the old key keep working, and the command line's refusals.

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tokenHeader returns the decoded JOSE header of a token.
func tokenHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	part, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatalf("token header %q: %v", part, err)
	}
	var h map[string]any
	if err := json.Unmarshal(b, &h); err != nil {
		t.Fatalf("token header %s: %v", b, err)
	}
	return h
}

// jwksKids returns the kids a node's key set publishes, after checking the keys are
// Ed25519 public keys.
func jwksKids(t *testing.T, n *clNode) []string {
	t.Helper()
	resp, err := clClient.Get(n.url("/.well-known/jwks.json"))
	if err != nil {
		t.Fatalf("jwks of %s: %v", n.name, err)
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kty, Crv, X, Kid, Alg, Use string }
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("jwks of %s: %d %v", n.name, resp.StatusCode, err)
	}
	var kids []string
	for _, k := range set.Keys {
		if x, err := base64.RawURLEncoding.DecodeString(k.X); err != nil || len(x) != ed25519.PublicKeySize || k.Kty != "OKP" || k.Crv != "Ed25519" || k.Alg != "EdDSA" || k.Use != "sig" {
			t.Errorf("%s publishes %+v", n.name, k)
		}
		kids = append(kids, k.Kid)
	}
	return kids
}

func TestKeysCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes; skipped with -short")
	}
	// A short --max-skew: a key replaced less than that ago is not retired alone.
	nodes := prepareCluster(t, []string{"a", "b"}, []string{"eu", "eu"}, base64.StdEncoding.EncodeToString(e2eKey))
	for _, n := range nodes {
		n.extra = append(n.extra, "--max-skew", "1s")
		n.start()
	}
	a, b := nodes[0], nodes[1]
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" ready", n.ready)
	}
	register(t, a, "alice", userPassword("alice"))
	_, old := login(a, "alice", userPassword("alice"))
	oldKid, _ := tokenHeader(t, old)["kid"].(string)
	if alg := tokenHeader(t, old)["alg"]; alg != "EdDSA" || oldKid == "" {
		t.Fatalf("a token of a fresh cluster: alg %v, kid %q; want EdDSA with a kid", alg, oldKid)
	}

	so, se, code := runCLI(t, "keys", "list", "--http", b.http, "--cluster-key-file", b.keyFile)
	if code != 0 || !strings.Contains(so, oldKid) || !strings.Contains(so, "signing") || !strings.Contains(so, "this node issues EdDSA tokens") {
		t.Errorf("keys list: exit %d: %s%s", code, so, se)
	}

	so, se, code = runCLI(t, "keys", "rotate", "--after", "0s", "--http", b.http, "--cluster-key-file", b.keyFile)
	lines := strings.Split(strings.TrimSpace(so), "\n")
	next := lines[len(lines)-1]
	if code != 0 || len(next) != 43 || next == oldKid {
		t.Fatalf("keys rotate: exit %d: %s%s; want a new kid alone on the last line", code, so, se)
	}
	t.Logf("keys rotate: %s", strings.TrimSpace(so))
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" to sign with the new key", func() bool {
			_, tok := login(n, "alice", userPassword("alice"))
			return tok != "" && tokenHeader(t, tok)["kid"] == next
		})
		if st, _ := call("GET", n.url("/v1/sessions/current"), old, nil); st != http.StatusOK {
			t.Errorf("a token of the old key on %s after the rotation: %d", n.name, st)
		}
		if kids := jwksKids(t, n); len(kids) != 2 || kids[0] != next || kids[1] != oldKid {
			t.Errorf("%s publishes %q; want the new key, then the old", n.name, kids)
		}
	}
	so, se, code = runCLI(t, "keys", "list", "--json", "--http", a.http, "--cluster-key-file", a.keyFile)
	var list struct {
		Keys []struct{ KID, Status string }
		Alg  string
	}
	if err := json.Unmarshal([]byte(so), &list); code != 0 || err != nil || len(list.Keys) != 2 || list.Keys[0].KID != next ||
		list.Keys[0].Status != "signing" || list.Keys[1].Status != "verifying" || list.Alg != "EdDSA" {
		t.Errorf("keys list --json on %s: exit %d: %s%s", a.name, code, so, se)
	}

	// The old key, replaced, retired at once through one node: on every node its
	// token gets 401 and it leaves the key set.
	waitFor(t, 10*time.Second, "the replaced key to be retired, --max-skew after it was replaced", func() bool {
		so, se, code = runCLI(t, "keys", "retire", oldKid, "--http", a.http, "--cluster-key-file", a.keyFile)
		return code == 0 || !strings.Contains(se, "409 conflict")
	})
	if code != 0 || !strings.Contains(so, "retired") {
		t.Fatalf("keys retire: exit %d: %s%s", code, so, se)
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" to refuse the retired key's token", func() bool {
			st, _ := call("GET", n.url("/v1/sessions/current"), old, nil)
			return st == http.StatusUnauthorized
		})
		if kids := jwksKids(t, n); len(kids) != 1 || kids[0] != next {
			t.Errorf("%s publishes %q once the old key is retired; want the new key alone", n.name, kids)
		}
	}

	// The key that signs now leaks: replaced and retired in one step.
	_, leaked := login(b, "alice", userPassword("alice"))
	so, se, code = runCLI(t, "keys", "rotate", "--after", "0s", "--retire", next, "--http", b.http, "--cluster-key-file", b.keyFile)
	lines = strings.Split(strings.TrimSpace(so), "\n")
	third := lines[len(lines)-1]
	if code != 0 || len(third) != 43 || third == next || !strings.Contains(so, "signing key "+next+" is retired") {
		t.Fatalf("keys rotate --retire: exit %d: %s%s; want %s retired and a new kid on the last line", code, so, se, next)
	}
	for _, n := range nodes {
		waitFor(t, 30*time.Second, n.name+" to refuse the leaked key's token and sign with the new key", func() bool {
			st, _ := call("GET", n.url("/v1/sessions/current"), leaked, nil)
			_, tok := login(n, "alice", userPassword("alice"))
			return st == http.StatusUnauthorized && tok != "" && tokenHeader(t, tok)["kid"] == third
		})
		if kids := jwksKids(t, n); len(kids) != 1 || kids[0] != third {
			t.Errorf("%s publishes %q; want the new key alone", n.name, kids)
		}
	}

	wrong := filepath.Join(t.TempDir(), "wrong.key")
	os.WriteFile(wrong, []byte(base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"ErrNoCommand", []string{"keys"}, 2, "Usage"},
		{"ErrUnknownCommand", []string{"keys", "frob"}, 2, "unknown command"},
		{"ErrNoKey", []string{"keys", "rotate", "--http", a.http}, 1, "cluster key"},
		{"ErrWrongKey", []string{"keys", "rotate", "--http", a.http, "--cluster-key-file", wrong}, 1, "401 unauthorized"},
		{"ErrNegativeAfter", []string{"keys", "rotate", "--after", "-1s", "--http", a.http, "--cluster-key-file", a.keyFile}, 2, "--after"},
		{"ErrTooLate", []string{"keys", "rotate", "--after", "25h", "--http", a.http, "--cluster-key-file", a.keyFile}, 2, "--after"},
		{"ErrArgument", []string{"keys", "list", "extra", "--http", a.http}, 2, "unexpected argument"},
		{"ErrNoNode", []string{"keys", "list", "--http", "127.0.0.1:1", "--cluster-key-file", a.keyFile}, 1, "sessiond keys list"},
		{"ErrRetireNoKID", []string{"keys", "retire", "--http", a.http, "--cluster-key-file", a.keyFile}, 2, "want one KID"},
		{"ErrRetireSigning", []string{"keys", "retire", third, "--http", a.http, "--cluster-key-file", a.keyFile}, 1, "409 conflict"},
		{"ErrRotateRetireLater", []string{"keys", "rotate", "--retire", next, "--http", a.http, "--cluster-key-file", a.keyFile}, 2, "--after 0"},
		{"ErrRotateRetireUnknown", []string{"keys", "rotate", "--after", "0s", "--retire", strings.Repeat("A", 43), "--http", a.http, "--cluster-key-file", a.keyFile}, 1, "404 not_found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, se, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(se, tc.want) {
				t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, se, tc.code, tc.want)
			}
		})
	}
	t.Run("Help", func(t *testing.T) {
		for _, args := range [][]string{{"keys", "--help"}, {"keys", "rotate", "--help"}, {"keys", "list", "--help"}} {
			so, se, code := runCLI(t, args...)
			if code != 0 || se != "" || !strings.Contains(so, "sessiond keys rotate") {
				t.Errorf("%v: exit %d, stderr %q, stdout %.80q…; want 0 and the usage on stdout", args, code, se, so)
			}
		}
	})
}
