package functions

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Passwords hashes and verifies passwords with argon2id. Each hash costs Time passes over
// Memory KiB of one core; the PasswordLimits it was made with bound how many run at once
// and how long callers wait (see hashing.go): logins (Verify) go before sign-ups (Hash),
// and a caller that cannot get a worker in time gets EUnavailable. A Passwords is safe
// for concurrent use.
type Passwords struct {
	Time    uint32 // passes; default 1
	Memory  uint32 // KiB; default 19456 (19 MiB, OWASP's argon2id baseline)
	Threads uint8  // default 1
	gate    *hashGate
	dummy   string // a hash to verify against when the user is unknown, for even timing
	// idKey is argon2.IDKey; tests replace it to hold a worker or count them.
	idKey func(password, salt []byte, time, memory uint32, threads uint8, keyLen uint32) []byte
}

// NewPasswords returns a hasher with the default cost, running at most workers hashes at
// once (0: DefaultPasswordWorkers) with no bound on waiting but the caller's context.
func NewPasswords(workers int) *Passwords {
	return NewPasswordsWithLimits(PasswordLimits{Workers: workers})
}

// NewPasswordsWithLimits returns a hasher with the default cost, bounded by l.
func NewPasswordsWithLimits(l PasswordLimits) *Passwords {
	return newPasswordsWithLimits(1, 19456, l)
}

func newPasswords(time, memory uint32, workers int) *Passwords {
	return newPasswordsWithLimits(time, memory, PasswordLimits{Workers: workers})
}

func newPasswordsWithLimits(time, memory uint32, l PasswordLimits) *Passwords {
	p := &Passwords{Time: time, Memory: memory, Threads: 1, gate: newHashGate(l), idKey: argon2.IDKey}
	p.dummy = p.hash([]byte("sessiond-dummy-password"))
	return p
}

// Stats returns a snapshot of the hashes running and the calls waiting.
func (p *Passwords) Stats() PasswordStats { return p.gate.stats() }

// Hash returns the PHC-format argon2id hash of password with a fresh random salt. The
// error, if any, is EUnavailable: no worker in time.
func (p *Passwords) Hash(ctx context.Context, password string) (string, error) {
	if err := p.gate.acquire(ctx, true); err != nil {
		return "", err
	}
	defer p.gate.release(ctx, true)
	return p.hash([]byte(password)), nil
}

func (p *Passwords) hash(password []byte) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key := p.idKey(password, salt, p.Time, p.Memory, p.Threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// Verify reports whether password matches hash. An empty or malformed hash never matches
// but costs the same as a real check, and waits in the same queue, so callers can hide
// whether an account exists. The error, if any, is EUnavailable: no worker in time.
func (p *Passwords) Verify(ctx context.Context, password, hash string) (bool, error) {
	if err := p.gate.acquire(ctx, false); err != nil {
		return false, err
	}
	defer p.gate.release(ctx, false)
	ok, wellFormed := p.verifyHash([]byte(password), hash)
	if !wellFormed {
		p.verifyHash([]byte(password), p.dummy)
	}
	return ok, nil
}

// verifyHash checks password against a PHC argon2id hash, using the parameters recorded
// in the hash so that cost changes keep old hashes valid.
func (p *Passwords) verifyHash(password []byte, hash string) (ok, wellFormed bool) {
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
	if err1 != nil || err2 != nil {
		return false, false
	}
	keyLen := len(key)
	if keyLen == 0 || keyLen > 64 {
		return false, false
	}
	got := p.idKey(password, salt, time, memory, threads, uint32(keyLen))
	return subtle.ConstantTimeCompare(got, key) == 1, true
}
