package functions

import (
	"context"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"testing/synctest"
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
		if got := NewPasswords(1); got.Memory != 19456 || got.Time != 1 || got.Threads != 1 || cap(got.slots) != 1 {
			t.Errorf("NewPasswords: m=%d t=%d p=%d slots=%d, want m=19456 t=1 p=1 slots=1", got.Memory, got.Time, got.Threads, cap(got.slots))
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

// TestPasswordsConcurrency checks that hashing is bounded: with one slot held, a Verify
// waits, and gives up with EUnavailable when its context ends.
func TestPasswordsConcurrency(t *testing.T) {
	t.Run("ErrUnavailable", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := newPasswords(1, 64, 1)
			h, err := p.Hash(context.Background(), testPassword)
			if err != nil {
				t.Fatalf("Hash: %v", err)
			}
			p.slots <- struct{}{} // another hash is running

			ctx, cancel := context.WithCancel(context.Background())
			type result struct {
				ok  bool
				err error
			}
			done := make(chan result, 1)
			go func() {
				ok, err := p.Verify(ctx, testPassword, h)
				done <- result{ok, err}
			}()
			synctest.Wait() // Verify is blocked waiting for the slot
			select {
			case r := <-done:
				t.Fatalf("Verify=%v, %v while the only slot is held, want it to wait", r.ok, r.err)
			default:
			}
			cancel()
			r := <-done
			wantCode(t, r.err, EUnavailable)
			if r.ok {
				t.Errorf("Verify=true with an error, want false")
			}
			_, err = p.Hash(ctx, testPassword)
			wantCode(t, err, EUnavailable)

			// Once the slot is free, hashing goes on.
			<-p.slots
			if ok, err := p.Verify(context.Background(), testPassword, h); err != nil || !ok {
				t.Errorf("Verify after release=%v, %v, want true", ok, err)
			}
			if len(p.slots) != 0 {
				t.Errorf("slots in use=%d after every call returned, want 0", len(p.slots))
			}
		})
	})

	t.Run("OK/WaitsForSlot", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := newPasswords(1, 64, 1)
			h, _ := p.Hash(context.Background(), testPassword)
			p.slots <- struct{}{}
			done := make(chan bool, 1)
			go func() {
				ok, _ := p.Verify(context.Background(), testPassword, h)
				done <- ok
			}()
			synctest.Wait()
			<-p.slots // the other hash finishes
			if ok := <-done; !ok {
				t.Errorf("Verify=false, want true once a slot is free")
			}
		})
	})
}

// TestPasswords_SignupsLeaveSlotsForLogins checks that new-password hashes (sign-ups)
// hold at most half of the slots: with that half busy, another Hash waits while a Verify
// (a login) runs at once.
func TestPasswords_SignupsLeaveSlotsForLogins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
		p := newPasswords(1, 64, 4) // sign-ups: min(4 slots, 4 CPUs)/2 = 2
		h, err := p.Hash(context.Background(), testPassword)
		if err != nil {
			t.Fatalf("Hash: %v", err)
		}
		for range 2 { // two sign-ups hashing
			if err := p.acquireHash(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := p.Hash(ctx, testPassword)
			done <- err
		}()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("a third Hash ran (err %v) with half the slots held by hashes, want it to wait", err)
		default:
		}
		if ok, err := p.Verify(context.Background(), testPassword, h); err != nil || !ok {
			t.Errorf("Verify = %v, %v while sign-ups hold their share, want true at once", ok, err)
		}
		cancel()
		wantCode(t, <-done, EUnavailable)
		p.releaseHash()
		p.releaseHash()
		if len(p.slots) != 0 || len(p.hashes) != 0 {
			t.Errorf("slots %d, hash admissions %d in use after every call returned, want 0", len(p.slots), len(p.hashes))
		}
		if _, err := p.Hash(context.Background(), testPassword); err != nil {
			t.Errorf("Hash after release: %v", err)
		}
	})
}
