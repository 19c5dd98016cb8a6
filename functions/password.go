package functions

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Passwords hashes and verifies passwords with argon2id. Each hash costs Time passes over
// Memory KiB, so at most Concurrency run at once; callers beyond that wait (or give up
// when their context ends). New passwords (Hash: sign-ups) may hold at most
// max(1, min(Concurrency, GOMAXPROCS)/2) slots — half the slots and half the CPUs — so a
// flood of sign-ups leaves the rest to logins (Verify) of existing users; with one slot
// or one CPU they share. A Passwords is safe for concurrent use.
type Passwords struct {
	Time    uint32 // passes; default 1
	Memory  uint32 // KiB; default 19456 (19 MiB, OWASP's argon2id baseline)
	Threads uint8  // default 1
	slots   chan struct{}
	hashes  chan struct{} // Hash calls holding or waiting for a slot (see above)
	dummy   string        // a hash to verify against when the user is unknown, for even timing
}

// NewPasswords returns a hasher with the default cost, running at most concurrency hashes
// at once (at least 1).
func NewPasswords(concurrency int) *Passwords {
	return newPasswords(1, 19456, concurrency)
}

func newPasswords(time, memory uint32, concurrency int) *Passwords {
	p := &Passwords{
		Time: time, Memory: memory, Threads: 1,
		slots: make(chan struct{}, max(concurrency, 1)), hashes: make(chan struct{}, max(min(concurrency, runtime.GOMAXPROCS(0))/2, 1)),
	}
	p.dummy = p.hash([]byte("sessiond-dummy-password"))
	return p
}

func (p *Passwords) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return Errorf(EUnavailable, "server busy: %v", ctx.Err())
	}
}

func (p *Passwords) release() { <-p.slots }

// acquireHash admits a Hash (its share of the slots) and then takes a slot.
func (p *Passwords) acquireHash(ctx context.Context) error {
	select {
	case p.hashes <- struct{}{}:
	case <-ctx.Done():
		return Errorf(EUnavailable, "server busy: %v", ctx.Err())
	}
	if err := p.acquire(ctx); err != nil {
		<-p.hashes
		return err
	}
	return nil
}

func (p *Passwords) releaseHash() { p.release(); <-p.hashes }

// Hash returns the PHC-format argon2id hash of password with a fresh random salt.
func (p *Passwords) Hash(ctx context.Context, password string) (string, error) {
	if err := p.acquireHash(ctx); err != nil {
		return "", err
	}
	defer p.releaseHash()
	return p.hash([]byte(password)), nil
}

func (p *Passwords) hash(password []byte) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// Verify reports whether password matches hash. An empty or malformed hash never matches
// but costs the same as a real check, so callers can hide whether an account exists.
func (p *Passwords) Verify(ctx context.Context, password, hash string) (bool, error) {
	if err := p.acquire(ctx); err != nil {
		return false, err
	}
	defer p.release()
	ok, wellFormed := verifyHash([]byte(password), hash)
	if !wellFormed {
		verifyHash([]byte(password), p.dummy)
	}
	return ok, nil
}

// verifyHash checks password against a PHC argon2id hash, using the parameters recorded
// in the hash so that cost changes keep old hashes valid.
func verifyHash(password []byte, hash string) (ok, wellFormed bool) {
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, false
	}
	var version int
	var memory, time uint32
	var threads uint8
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &memory, &time, &threads); err != nil ||
		memory == 0 || memory > 1<<20 || time == 0 || time > 16 || threads == 0 {
		return false, false
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	key, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 || len(key) > 64 {
		return false, false
	}
	got := argon2.IDKey(password, salt, time, memory, threads, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, true
}
