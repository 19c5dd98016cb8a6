package functions

import (
	"context"
	"regexp"
	"strings"
	"testing"
)

func TestPasswords(t *testing.T) {
	ctx := context.Background()
	p := newPasswords(1, 64, 4)
	mustHash := func(t *testing.T, p *Passwords, password string) string {
		t.Helper()
		h, err := p.Hash(ctx, password)
		if err != nil {
			t.Fatalf("Hash: %v", err)
		}
		return h
	}
	verify := func(t *testing.T, p *Passwords, password, hash string) bool {
		t.Helper()
		ok, err := p.Verify(ctx, password, hash)
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		return ok
	}

	t.Run("OK", func(t *testing.T) {
		for _, password := range []string{testPassword, strings.Repeat("€", 80), "with\x00nul", ""} {
			h := mustHash(t, p, password)
			if !verify(t, p, password, h) {
				t.Errorf("Verify(%q, Hash(%q))=false, want true", password, password)
			}
		}
	})

	t.Run("Format", func(t *testing.T) {
		h := mustHash(t, p, testPassword)
		re := regexp.MustCompile(`^\$argon2id\$v=19\$m=64,t=1,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)
		if !re.MatchString(h) {
			t.Errorf("Hash=%q, want it to match %q", h, re)
		}
		if got := NewPasswords(1); got.Memory != 19456 || got.Time != 1 || got.Threads != 1 || got.Stats().Workers != 1 {
			t.Errorf("NewPasswords: m=%d t=%d p=%d workers=%d, want m=19456 t=1 p=1 workers=1", got.Memory, got.Time, got.Threads, got.Stats().Workers)
		}
	})

	t.Run("SaltDiffers", func(t *testing.T) {
		h1, h2 := mustHash(t, p, testPassword), mustHash(t, p, testPassword)
		if h1 == h2 {
			t.Fatalf("two hashes of one password are both %q, want different salts", h1)
		}
		if salt := func(h string) string { return strings.Split(h, "$")[4] }; salt(h1) == salt(h2) {
			t.Errorf("salt=%q twice, want different salts", salt(h1))
		}
		if !verify(t, p, testPassword, h1) || !verify(t, p, testPassword, h2) {
			t.Errorf("Verify=false, want both hashes to match")
		}
	})

	t.Run("WrongPassword", func(t *testing.T) {
		long := strings.Repeat("p", MaxPassword)
		h := mustHash(t, p, testPassword)
		hl := mustHash(t, p, long)
		for _, tc := range []struct{ password, hash string }{
			{"wrong password", h},
			{strings.ToUpper(testPassword), h},
			{testPassword + " ", h},
			{"", h},
			{long[:MaxPassword-1] + "q", hl}, // the last byte counts
			{long[:MaxPassword-1], hl},
			{long + "p", hl},
		} {
			if verify(t, p, tc.password, tc.hash) {
				t.Errorf("Verify(%q)=true, want false", tc.password)
			}
		}
	})

	t.Run("ParametersFromHash", func(t *testing.T) {
		// A hash made at another cost stays valid after the cost changes.
		old := newPasswords(2, 128, 1)
		h := mustHash(t, old, testPassword)
		if !strings.Contains(h, "$m=128,t=2,p=1$") {
			t.Fatalf("Hash=%q, want m=128,t=2,p=1", h)
		}
		if !verify(t, p, testPassword, h) {
			t.Errorf("Verify with other parameters=false, want true")
		}
	})

	t.Run("Malformed", func(t *testing.T) {
		good := mustHash(t, p, testPassword)
		parts := strings.Split(good, "$") // "", "argon2id", "v=19", "m=64,t=1,p=1", salt, key
		with := func(i int, v string) string {
			c := append([]string(nil), parts...)
			c[i] = v
			return strings.Join(c, "$")
		}
		for _, tc := range []struct{ name, hash string }{
			{"Empty", ""},
			{"Plain", testPassword},
			{"Argon2i", with(1, "argon2i")},
			{"Bcrypt", "$2a$10$abcdefghijklmnopqrstuuN4VY0Zyb/0n3eHEK5Z6Hcfq1b9I3Kq"},
			{"Version", with(2, "v=18")},
			{"NoVersion", with(2, "")},
			{"ZeroMemory", with(3, "m=0,t=1,p=1")},
			{"HugeMemory", with(3, "m=4194304,t=1,p=1")},
			{"ZeroTime", with(3, "m=64,t=0,p=1")},
			{"HugeTime", with(3, "m=64,t=17,p=1")},
			{"ZeroThreads", with(3, "m=64,t=1,p=0")},
			{"BadParams", with(3, "m=x,t=1,p=1")},
			{"BadSalt", with(4, "!!!!")},
			{"BadKey", with(5, "!!!!")},
			{"EmptyKey", with(5, "")},
			{"LongKey", with(5, strings.Repeat("A", 88))},
			{"PaddedKey", with(5, parts[5]+"=")},
			{"TooFewParts", strings.Join(parts[:5], "$")},
			{"TooManyParts", good + "$x"},
			{"Truncated", good[:len(good)-10]},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if verify(t, p, testPassword, tc.hash) {
					t.Errorf("Verify(%q)=true, want false", tc.hash)
				}
			})
		}
	})
}
