package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// signKeyStore is what signing needs of the node's data: *storage.DB.
type signKeyStore interface {
	RecordsUnder(ctx context.Context, prefix string, limit int) ([]string, []crdt.Map, bool, error)
	Record(ctx context.Context, key string) (crdt.Map, bool, error)
	Update(ctx context.Context, fn func(tx *storage.Tx) error) error
	Clock() *crdt.Clock
}

var _ signKeyStore = (*storage.DB)(nil)

// signingMaintainEvery is how often signing.run looks at the keys even when no record
// changed: keys retire and start signing as time passes.
const signingMaintainEvery = 30 * time.Second

// signing keeps this node's ring of signing keys (signkeys.go) in step with their
// records: it reloads the ring when a record changes (the storage commit hook kicks it),
// creates the cluster's first key, rotates on request, and maintains the records (see
// maintain). Safe for concurrent use.
type signing struct {
	db       signKeyStore
	tokens   *tokens
	lifetime time.Duration // the longest a token lives
	skew     time.Duration // Config.MaxSkew: how far behind another node's clock may be
	now      func() time.Time
	log      *slog.Logger

	clusterKeys atomic.Pointer[[][]byte]
	// mayCreate reports whether the node may create the cluster's first key: it has
	// caught up with its peers (or has none), so a key they have would be here.
	mayCreate func() bool
	kick      chan struct{} // a record changed, or the cluster keys: reload and maintain

	mu       sync.Mutex // serialises loads and writes
	warned   map[string]bool
	lookedUp time.Time // the latest reload by lookup

	records int // signing key records at the latest load (maxKeyRecords + 1: more)

	expiresMu sync.Mutex           // serialises outlives' writes
	expires   map[string]time.Time // kid → the latest expiry outlives recorded
}

// newSigning returns the signing keys of db for t; kick is the channel
// signingKeysChanged pokes.
func newSigning(db signKeyStore, t *tokens, clusterKeys [][]byte, lifetime, skew time.Duration, now func() time.Time, kick chan struct{}, log *slog.Logger) *signing {
	s := &signing{db: db, tokens: t, lifetime: lifetime, skew: skew, now: now, log: log,
		mayCreate: func() bool { return true }, kick: kick, warned: map[string]bool{}, expires: map[string]time.Time{}}
	s.clusterKeys.Store(&clusterKeys)
	return s
}

// setClusterKeys makes keys the cluster keys private keys are sealed under and opened
// with (a reload), and has the ring rebuilt and the keys resealed.
func (s *signing) setClusterKeys(keys [][]byte) {
	s.clusterKeys.Store(&keys)
	s.poke()
}

// poke asks run to reload and maintain; it never blocks.
func (s *signing) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// signingKeysChanged is for the storage commit hook: it pokes kick, without blocking, if
// a signing key record changed.
func signingKeysChanged(changes []storage.Change, kick chan<- struct{}) {
	for i := range changes {
		if strings.HasPrefix(changes[i].Key, crdt.SigningKeyPrefix) {
			select {
			case kick <- struct{}{}:
			default:
			}
			return
		}
	}
}

// startSigning loads the node's signing keys and hooks them to its tokens. A node that
// joins nobody creates the cluster's first key here if it has none, so its first token is
// EdDSA; one that joins others waits until it has caught up with them (becomeReady), so
// that it does not create a key they already have.
func (n *Node) startSigning(keys [][]byte) error {
	n.signing = newSigning(n.db, n.tokens, keys, n.cfg.SessionTTL+tokenLeeway, n.cfg.MaxSkew, n.cfg.Now, n.keysKick,
		n.cfg.Logger.With("component", "signing", "node", n.cfg.NodeName))
	n.signing.mayCreate = func() bool { return len(n.cfg.Join) == 0 || n.ready.Load() }
	n.tokens.lookup = n.signing.lookup
	n.tokens.outlives = n.signing.outlives
	membership := n.membership
	n.tokens.hs256Only = func() bool { return !everyMemberVerifiesEdDSA(membership.Members()) }
	if err := n.signing.maintain(n.ctx); err != nil {
		return err
	}
	// What this node signed before a restart is forgotten with the process. It may have
	// signed with the key that signs now up to now, unaware of a newer key created
	// elsewhere (cut off meanwhile): count it as signed now, so that once that key's
	// record arrives, maintain records the signature (signed_until) and the key verifies
	// until those tokens expire.
	now := n.cfg.Now()
	if k := n.tokens.ring.Load().signer(now); k != nil {
		n.tokens.noteSigned(k.kid, now)
	}
	return nil
}

// everyMemberVerifiesEdDSA reports whether every member not gone (left or removed)
// verifies EdDSA tokens. A member that failed counts: it may come back, and a token
// issued meanwhile would fail there.
func everyMemberVerifiesEdDSA(members []cluster.Member) bool {
	for _, m := range members {
		if m.Status != api.MemberLeft && m.Status != api.MemberRemoved && !m.EdDSA {
			return false
		}
	}
	return true
}

// run reloads and maintains the keys when poked and every signingMaintainEvery, until
// ctx ends.
func (s *signing) run(ctx context.Context) {
	t := time.NewTicker(signingMaintainEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
		if err := s.maintain(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("signing keys: maintenance failed; retrying later", slog.Any("err", err))
		}
	}
}

// loadLocked reads the signing key records and makes the ring they describe the
// tokens'. s.mu is held.
func (s *signing) loadLocked(ctx context.Context) (*keyRing, error) {
	keys, ms, more, err := s.db.RecordsUnder(ctx, crdt.SigningKeyPrefix, maxKeyRecords)
	if err != nil {
		return nil, fmt.Errorf("read signing keys: %w", err)
	}
	if more {
		s.warnOnce("more", "more signing key records than a node reads; those past the first in kid order are ignored", "read", len(keys))
	}
	s.records = len(keys)
	if more {
		s.records++
	}
	recs := make([]crdt.SigningKey, len(keys))
	for i := range keys {
		recs[i] = crdt.ReadSigningKey(keys[i][len(crdt.SigningKeyPrefix):], &ms[i])
	}
	ring, problems := newKeyRing(recs, *s.clusterKeys.Load(), s.lifetime, s.now())
	for _, p := range problems {
		s.warnOnce(p.Error(), "signing key record ignored", slog.Any("err", p))
	}
	s.tokens.ring.Store(ring)
	return ring, nil
}

func (s *signing) warnOnce(key, msg string, args ...any) {
	if !s.warned[key] {
		s.warned[key] = true
		s.log.Warn(msg, args...)
	}
}

// lookupEvery bounds how often lookup reloads the ring. A record that arrives is loaded
// within moments anyway (the commit hook pokes run): lookup only covers that moment, so
// tokens naming a kid whose record is here but not in the ring (a key beyond
// maxRingKeys) cannot make every request reload it.
const lookupEvery = time.Second

// lookup is the tokens' hook for a kid its ring lacks: when the kid's record is here,
// the ring is reloaded (the record arrived since it was built, at most once per
// lookupEvery) and returned; else nil. It runs before the token's signature is checked,
// so it costs at most one read of the record cache or the file, as an unknown session
// id does, and now and then a reload.
func (s *signing) lookup(kid string) *keyRing {
	ctx := context.Background()
	if _, ok, err := s.db.Record(ctx, crdt.SigningKeyKey(kid)); err != nil || !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.lookedUp) >= lookupEvery {
		s.lookedUp = now
		if _, err := s.loadLocked(ctx); err != nil {
			return nil
		}
	}
	return s.tokens.ring.Load()
}

// expiresEvery rounds up the expiries outlives records, so that a steady stream of
// long-lived tokens costs each node one write per key this often.
const expiresEvery = time.Hour

// outlives is the tokens' hook for a token signed at now with the key kid that expires
// at expires. A token that expires within the usual lifetime is covered already: the key
// verifies for that long after it last signed (signkeys.go). A later one (an app's
// session, up to a year) is not, so before it is handed out the key's record must say
// that the key verifies until then (crdt.FieldExpiresUntil, rounded up to expiresEvery):
// outlives writes that, durably, unless this node did or the record says so already. An
// error means the token must not be handed out: a rotation could retire its key first.
func (s *signing) outlives(ctx context.Context, kid string, now, expires time.Time) error {
	if !expires.After(now.Add(s.lifetime)) {
		return nil
	}
	until := expires.Truncate(expiresEvery).Add(expiresEvery)
	s.expiresMu.Lock()
	defer s.expiresMu.Unlock()
	if !s.expires[kid].Before(until) {
		return nil
	}
	if k := s.tokens.ring.Load().keys[kid]; k != nil && !k.expiresUntil.Before(until) {
		s.expires[kid] = k.expiresUntil
		return nil
	}
	err := s.db.Update(ctx, func(tx *storage.Tx) error {
		_, err := tx.Merge(crdt.SigningKeyKey(kid), crdt.ExpiresWith(until, s.db.Clock().Next()))
		return err
	})
	if err != nil {
		return fmt.Errorf("record the expiry of a token of signing key %s: %w", kid, err)
	}
	if len(s.expires) >= maxRingKeys { // bounded: a key beyond is long retired
		clear(s.expires)
	}
	s.expires[kid] = until
	return nil
}

// maintain reloads the ring and brings the records in line with it, in one write:
//
//   - a new key, when the node can open no key that is not retired (the cluster's first
//     key, usually) and it may create one (mayCreate);
//   - each live key this node can open is sealed under each of its cluster keys that
//     the record lacks a sealing for (a cluster key rotation: see signkeys.go);
//   - a retired key's sealings are deleted;
//   - a key this node signed with after a newer key took over gets the time of that
//     signature in its signed_until, so that it verifies until that token expires.
func (s *signing) maintain(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ring, err := s.loadLocked(ctx)
	if err != nil {
		return err
	}
	now := s.now()
	clusterKeys := *s.clusterKeys.Load()
	signed := s.tokens.signedWith()
	type update struct {
		key string
		m   func(ts crdt.Timestamp) crdt.Map
	}
	var updates []update
	create := !ring.usable(now) && s.mayCreate()
	for _, k := range ring.order {
		switch {
		case !k.liveAt(now):
			if len(k.sealed) > 0 {
				ids := k.sealed
				updates = append(updates, update{crdt.SigningKeyKey(k.kid), func(ts crdt.Timestamp) crdt.Map { return crdt.UnsealSigningKey(ids, ts) }})
			}
			continue
		case k.private != nil:
			for _, ck := range clusterKeys {
				if id := sealID(ck); !slices.Contains(k.sealed, id) && len(k.sealed) < maxSealed {
					sealed := seal(ck, k.kid, k.private)
					updates = append(updates, update{crdt.SigningKeyKey(k.kid), func(ts crdt.Timestamp) crdt.Map {
						return crdt.SealSigningKey(id, sealed, ts)
					}})
				}
			}
		}
		if at, ok := signed[k.kid]; ok && !k.superseded.IsZero() && at.After(k.superseded) && at.After(k.signedUntil) {
			updates = append(updates, update{crdt.SigningKeyKey(k.kid), func(ts crdt.Timestamp) crdt.Map { return crdt.SignedWith(at, ts) }})
		}
	}
	if !create && len(updates) == 0 {
		return nil
	}
	var fresh newKey
	if create {
		fresh = generateKey(clusterKeys)
	}
	err = s.db.Update(ctx, func(tx *storage.Tx) error {
		clock := s.db.Clock()
		for _, u := range updates {
			if _, err := tx.Merge(u.key, u.m(clock.Next())); err != nil {
				return err
			}
		}
		if create {
			ts := clock.Next()
			if _, err := tx.Merge(crdt.SigningKeyKey(fresh.kid), fresh.record(now, ts)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("write signing keys: %w", err)
	}
	if create {
		s.log.Info("signing key created: no key could sign here", "kid", fresh.kid)
	}
	_, err = s.loadLocked(ctx)
	return err
}

// rotate creates a new signing key that every node signs with from after from now on,
// published at once. With retire, the kid of a key (after must be 0), that key is
// retired in the same write (one retired already stays so), on every node as the records
// reach it: its tokens stop verifying (a leaked key, replaced and ended in one step);
// retired is then that key. The operator names it, so that a node behind the others — in time or in what
// it has received — cannot retire an innocent one; a kid this node does not know is
// functions.ENotFound. The new key then starts signing up to skew before now (never
// before the retired key started), so that a node whose clock is behind does not fall
// back to signing with a key older than the retired one.
//
// It fails with errTooManyKeys while maxLiveKeys keys verify (not counting the one it
// retires), and with errTooManyRotations while maxRotations keys (2×maxRotations for one
// that retires a key that still verifies) were created within rotationWindow; retry is
// then when there will be room, if there will.
func (s *signing) rotate(ctx context.Context, after time.Duration, retire string) (k, retired *signKey, retry time.Time, err error) {
	if retire != "" && after != 0 {
		return nil, nil, time.Time{}, errors.New("rotate: a key is retired only by a rotation that signs at once")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ring, err := s.loadLocked(ctx)
	if err != nil {
		return nil, nil, time.Time{}, err
	}
	if s.records >= maxKeyRecords {
		return nil, nil, time.Time{}, errTooManyRecords
	}
	now := s.now()
	var victim *signKey
	if retire != "" {
		if victim = ring.keys[retire]; victim == nil {
			var held bool
			if victim, held = s.outOfRing(ctx, retire); !held {
				return nil, nil, time.Time{}, functions.Errorf(functions.ENotFound, "no signing key %q here", retire)
			}
		}
	}
	live := ring.live(now)
	if victim != nil {
		live = slices.DeleteFunc(live, func(k *signKey) bool { return k == victim })
	}
	if len(live) >= maxLiveKeys {
		// Room comes once all but maxLiveKeys-1 of them have retired.
		var ends []time.Time
		for _, k := range live {
			if !k.retires.IsZero() {
				ends = append(ends, k.retires)
			}
		}
		slices.SortFunc(ends, time.Time.Compare)
		if i := len(live) - maxLiveKeys; i < len(ends) {
			retry = ends[i]
		}
		return nil, nil, retry, errTooManyKeys
	}
	limit := maxRotations
	if victim != nil && victim.liveAt(now) {
		limit = 2 * maxRotations // an emergency after a busy day: see maxRotations
	}
	if recent := ring.createdSince(now.Add(-rotationWindow)); len(recent) >= limit {
		// Newest first: room comes once the limit-th newest leaves the window.
		return nil, nil, recent[limit-1].created.Time().Add(rotationWindow), errTooManyRotations
	}
	from := now.Add(after)
	if victim != nil {
		from = now.Add(-s.skew)
		if from.Before(victim.from) && !victim.from.After(now) {
			from = victim.from // a key that has not started (a next key) does not hold it back
		}
	}
	fresh := generateKey(*s.clusterKeys.Load())
	err = s.db.Update(ctx, func(tx *storage.Tx) error {
		ts := s.db.Clock().Next()
		if _, err := tx.Merge(crdt.SigningKeyKey(fresh.kid), fresh.record(from, ts)); err != nil {
			return err
		}
		if victim == nil {
			return nil
		}
		_, err := tx.Merge(crdt.SigningKeyKey(victim.kid), crdt.RetireSigningKey(s.db.Clock().Next()))
		return err
	})
	if err != nil {
		return nil, nil, time.Time{}, fmt.Errorf("write signing key: %w", err)
	}
	if ring, err = s.loadLocked(ctx); err != nil {
		return nil, nil, time.Time{}, err
	}
	if k = ring.keys[fresh.kid]; k == nil { // a record this node wrote is malformed: a bug
		return nil, nil, time.Time{}, fmt.Errorf("signing key %s written but not read back", fresh.kid)
	}
	s.log.Info("signing key rotated", "kid", k.kid, "signs_from", k.from)
	if victim != nil {
		retired = retiredView(ring, victim, now)
		s.log.Warn("signing key retired by an operator: its tokens no longer verify", "kid", victim.kid)
	}
	return k, retired, time.Time{}, nil
}

// Rotations are bounded in rate as well as in keys that verify: at most maxRotations keys
// created within rotationWindow, or twice that for a rotation that retires a key that
// still verifies, so that a leaked key can still be ended after a day of many rotations.
// Key records are kept for good and a node reads at most maxKeyRecords, so a loop of
// rotations (and retires, which free their keys' places among those that verify) would
// otherwise use up the cluster's rotations in minutes; with these bounds it takes 64 days
// of rotating without pause.
const (
	maxRotations   = 32
	rotationWindow = 24 * time.Hour
)

// errTooManyRotations refuses a rotation while maxRotations keys (twice that for one that
// retires a key that still verifies) were created within rotationWindow.
var errTooManyRotations = errors.New("too many signing keys created lately")

// errTooManyRecords refuses a rotation once the cluster holds maxKeyRecords signing key
// records: a node reads no more (records are kept for good), so a new one might not be
// read back.
var errTooManyRecords = errors.New("too many signing key records")

// errSigningNow refuses to retire alone a key that some node may sign with now (maySign).
var errSigningNow = errors.New("the key signs now")

// retire retires the signing key kid at once, on every node as the record reaches it: its
// tokens stop verifying and it leaves the key set (a leaked key). The key that signs now
// cannot be retired (rotate first, with --after 0): errSigningNow; a kid this node does
// not know is functions.ENotFound. A key retired already is left as it is.
func (s *signing) retire(ctx context.Context, kid string) (*signKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ring, err := s.loadLocked(ctx)
	if err != nil {
		return nil, err
	}
	k, inRing := ring.keys[kid]
	if !inRing {
		var held bool
		if k, held = s.outOfRing(ctx, kid); !held {
			return nil, functions.Errorf(functions.ENotFound, "no signing key %q here", kid)
		}
	}
	now := s.now()
	if !k.retiredAt.IsZero() {
		return retiredView(ring, k, now), nil // retired already: left as it is
	}
	if inRing && s.maySign(k, now) { // a key out of the ring is past its tokens' lifetime here
		// Nodes whose clocks are behind (within skew) may still sign with it, and would
		// fall back to an older key once it is retired: retire it with a rotation.
		return nil, errSigningNow
	}
	// Also a key that no longer verifies here: it may still elsewhere (clocks, records).
	err = s.db.Update(ctx, func(tx *storage.Tx) error {
		_, err := tx.Merge(crdt.SigningKeyKey(kid), crdt.RetireSigningKey(s.db.Clock().Next()))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("retire signing key: %w", err)
	}
	if ring, err = s.loadLocked(ctx); err != nil {
		return nil, err
	}
	s.log.Warn("signing key retired by an operator: its tokens no longer verify", "kid", kid)
	return retiredView(ring, k, now), nil
}

// outOfRing returns a view of the signing key kid when its record is here but the ring
// left it out (past the newest maxRingKeys, a key stays only while it verifies here).
func (s *signing) outOfRing(ctx context.Context, kid string) (*signKey, bool) {
	m, held, err := s.db.Record(ctx, crdt.SigningKeyKey(kid))
	if err != nil || !held {
		return nil, false
	}
	rec := crdt.ReadSigningKey(kid, &m)
	return &signKey{kid: kid, created: rec.Created, from: rec.From, retiredAt: rec.Retired, retires: rec.Retired}, true
}

// maySign reports whether some node may sign with k at now, its clock within skew of
// this node's: k has started (or starts within skew), and no newer key replaced it, or
// one did less than skew ago — unless that newer key replaced it before it started (it
// never signs).
func (s *signing) maySign(k *signKey, now time.Time) bool {
	switch {
	case k.from.After(now.Add(s.skew)):
		return false
	case k.superseded.IsZero():
		return true
	case k.superseded.Before(k.from):
		return false // replaced before it started: it never signs
	}
	return k.superseded.Add(s.skew).After(now)
}

// retiredView returns k as ring, reloaded after k was retired, knows it: a key that left
// the ring (past the newest maxRingKeys, a key is kept only while it verifies) as k with
// its retirement, so that the answer describes it.
func retiredView(ring *keyRing, k *signKey, now time.Time) *signKey {
	if r := ring.keys[k.kid]; r != nil {
		return r
	}
	gone := *k
	gone.retiredAt, gone.retires = now, now
	return &gone
}

// describe returns k as the admin routes show it, at now in ring.
func describeKey(ring *keyRing, k *signKey, now time.Time) api.SigningKey {
	out := api.SigningKey{KID: k.kid, Alg: algEdDSA, Status: ring.status(k, now), CreatedAt: k.created.Time(),
		SignsFrom: k.from.UTC(), Private: k.private != nil, Sealings: len(k.sealed)}
	if !k.retires.IsZero() {
		r := k.retires.UTC()
		out.RetiresAt = &r
	}
	return out
}
