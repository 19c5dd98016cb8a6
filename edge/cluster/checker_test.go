package cluster

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// simStore adapts *storage.DB to functions.Store, as edge/store.go does, and records every
// committed write in the cluster's model: the merge updates and log appends of each Update
// that returned nil (durable on acknowledgement).
type simStore struct {
	*storage.DB
	model *model
}

var _ functions.Store = simStore{}

// Update implements functions.Store.
func (s simStore) Update(ctx context.Context, fn func(tx functions.Tx) error) error {
	var w modelWrites
	err := s.DB.Update(ctx, func(tx *storage.Tx) error {
		w = modelWrites{} // the committer may run fn again if its batch is retried
		return fn(recordingTx{tx: tx, w: &w})
	})
	if err == nil {
		s.model.add(w)
	}
	return err
}

// Conversations implements functions.Store.
func (s simStore) Conversations(ctx context.Context, userID string) ([]functions.ConversationInfo, error) {
	cs, err := s.DB.Conversations(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]functions.ConversationInfo, len(cs))
	for i, c := range cs {
		out[i] = functions.ConversationInfo{ID: c.ID, With: c.With, Last: c.Last, Count: c.Count}
	}
	return out, nil
}

// recordingTx passes a transaction through, noting what it writes.
type recordingTx struct {
	tx *storage.Tx
	w  *modelWrites
}

func (r recordingTx) Record(key string) (crdt.Map, bool, error) { return r.tx.Record(key) }

func (r recordingTx) Entry(conv string, id crdt.EntryID) (crdt.Entry, bool, error) {
	return r.tx.Entry(conv, id)
}

func (r recordingTx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	m, err := r.tx.Merge(key, update)
	if err == nil {
		r.w.merges = append(r.w.merges, modelMerge{key, update.Clone()})
	}
	return m, err
}

func (r recordingTx) Append(conv string, msg crdt.Message) (crdt.Entry, error) {
	e, err := r.tx.Append(conv, msg)
	if err == nil {
		r.w.entries = append(r.w.entries, modelEntry{conv, crdt.Entry{ID: e.ID, Data: bytes.Clone(e.Data)}})
	}
	return e, err
}

type modelMerge struct {
	key    string
	update crdt.Map
}

type modelEntry struct {
	conv  string
	entry crdt.Entry
}

type modelWrites struct {
	merges  []modelMerge
	entries []modelEntry
}

// model is the oracle: the merge of every acknowledged write. Merging is commutative,
// associative and idempotent, so whatever the network did, a converged cluster must hold
// exactly this, minus what the merge rules delete (erased users' personal fields, their
// sessions and messages; expired sessions), plus the erasure markers that storage leaves
// of its own accord (see acceptDerivedMarkers). The markers an erasure writes (Users.Delete)
// are acknowledged writes like any other, recorded here, and never deleted.
type model struct {
	mu      sync.Mutex
	recs    map[string]crdt.Map
	entries map[string]map[crdt.EntryID][]byte // conv → entry → data
	lww     map[string]map[string]crdt.Field   // key → field → acknowledged write with the highest HLC
	writes  int
}

func newModel() *model {
	return &model{recs: make(map[string]crdt.Map), entries: make(map[string]map[crdt.EntryID][]byte),
		lww: make(map[string]map[string]crdt.Field)}
}

// count returns the number of acknowledged writes so far.
func (m *model) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

func (m *model) add(w modelWrites) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mg := range w.merges {
		r := m.recs[mg.key]
		r.Merge(mg.update)
		m.recs[mg.key] = r
		m.writes++
		// A naive oracle for last-writer-wins fields, independent of Map.Merge: keep the
		// acknowledged write with the highest timestamp.
		for _, name := range mg.update.Names() {
			f, _ := mg.update.Field(name)
			if f.Kind != crdt.KindLWW {
				continue
			}
			fs := m.lww[mg.key]
			if fs == nil {
				fs = make(map[string]crdt.Field)
				m.lww[mg.key] = fs
			}
			if old, ok := fs[name]; !ok || old.TS.Less(f.TS) {
				fs[name] = f
			}
		}
	}
	for _, e := range w.entries {
		es := m.entries[e.conv]
		if es == nil {
			es = make(map[crdt.EntryID][]byte)
			m.entries[e.conv] = es
		}
		es[e.entry.ID] = e.entry.Data
		m.writes++
	}
}

// lastWrite returns the value of the acknowledged write to LWW field name of key with
// the highest HLC, and false if there is none or it is a deletion.
func (m *model) lastWrite(key, name string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.lww[key][name]
	if !ok || f.Deleted {
		return "", false
	}
	return string(f.Value), true
}

// record returns a copy of the model's record key.
func (m *model) record(key string) (crdt.Map, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[key]
	return r.Clone(), ok
}

func (m *model) erasedLocked(user string) bool {
	r, ok := m.recs[crdt.UserKey(user)]
	if !ok {
		return false
	}
	_, del := r.Flag(crdt.FieldDeleted)
	return del
}

func (m *model) erased(user string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.erasedLocked(user)
}

// erasedUserFields mirrors DESIGN.md: an erased account keeps its name (still claimed),
// the deleted flag and the revocation mark, nothing personal.
var erasedUserFields = map[string]bool{
	crdt.FieldUsername: true, crdt.FieldDeleted: true, crdt.FieldSessionsUntil: true, crdt.FieldSessionsWindow: true,
}

// lostName reports whether the model says account a lost its username: an earlier claim
// of a live account holds it.
func (m *model) lostName(a *account) bool {
	claims, _ := m.record(crdt.ClaimKey(a.username))
	for _, id := range crdt.Claimants(&claims) {
		if u, _ := m.record(crdt.UserKey(id)); id != a.id && crdt.ReadUser(id, &u).Deleted {
			continue
		}
		return id != a.id
	}
	return false
}

// expected returns the converged state the model implies at time now: replication key →
// canonical encoding of its storage.Change.
func (m *model) expected(now time.Time) map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string][]byte, len(m.recs))
	for key, rec := range m.recs {
		r := rec.Clone()
		switch {
		case strings.HasPrefix(key, crdt.UserPrefix):
			if _, del := r.Flag(crdt.FieldDeleted); del {
				r.Prune(func(name string, _ crdt.Field) bool { return !erasedUserFields[name] })
			}
		case strings.HasPrefix(key, crdt.SessionPrefix):
			s := crdt.ReadSession(key[len(crdt.SessionPrefix):], &r)
			if s.UserID == "" || m.erasedLocked(s.UserID) || !crdt.SessionExpires(&r).After(now) {
				continue
			}
		}
		out[key] = storage.Change{Key: key, Map: r}.AppendBinary(nil)
	}
	for conv, es := range m.entries {
		a, b, _ := crdt.Participants(conv)
		erased := m.erasedLocked(a) || m.erasedLocked(b)
		for id, data := range es {
			if erased && !crdt.IsErasureMarker(data) {
				continue
			}
			c := storage.Change{Key: storage.LogKey(conv, id), Conv: conv, Entry: crdt.Entry{ID: id, Data: data}}
			out[c.Key] = c.AppendBinary(nil)
		}
	}
	return out
}

// acceptDerivedMarkers adds to want the erasure markers that got holds and the model does
// not predict, and returns what is wrong with any of them.
//
// Storage leaves a marker of its own in a conversation whose messages an erasure deleted
// or dropped on a node, when the conversation held none (a message of it arrived after
// the erasure, or before the erasure's own markers). Such a marker is no acknowledged
// write: whether a node leaves one, and so its ID, depends on the order things reached
// it, which the model does not follow. What the model does know is that such a marker may
// only name a user it says is erased, in one of that user's conversations; and since
// markers replicate like any entry and are never deleted, every node that holds the
// conversation must end with the same ones. So the checker takes the markers of one
// replica (got) that pass that test into the expected state, and every other replica is
// then compared with it: for marker keys, replicas are compared with each other.
func (m *model) acceptDerivedMarkers(want, got map[string][]byte) []string {
	var bad []string
	for key, enc := range got {
		if _, ok := want[key]; ok {
			continue
		}
		c, err := storage.DecodeChange(enc)
		if err != nil || c.Conv == "" || !crdt.IsErasureMarker(c.Entry.Data) {
			continue // not a marker: the comparison reports it
		}
		msg, err := crdt.DecodeMessage(c.Entry.Data)
		if err != nil || !m.erased(msg.From) {
			bad = append(bad, fmt.Sprintf("marker %s names %.8s, who is not erased", key, msg.From))
			continue
		}
		want[key] = enc
	}
	return bad
}

// log returns the model's entries of conv in log order, or nil if a participant is erased.
func (m *model) log(conv string) []crdt.Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, b, _ := crdt.Participants(conv)
	if m.erasedLocked(a) || m.erasedLocked(b) {
		return nil
	}
	var out []crdt.Entry
	for id, data := range m.entries[conv] {
		out = append(out, crdt.Entry{ID: id, Data: data})
	}
	slices.SortFunc(out, func(x, y crdt.Entry) int { return x.ID.Compare(y.ID) })
	return out
}

// convOf returns the conversation holding entry id.
func (m *model) convOf(id crdt.EntryID) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for conv, es := range m.entries {
		if _, ok := es[id]; ok {
			return conv, true
		}
	}
	return "", false
}

func (m *model) convs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for conv := range m.entries {
		out = append(out, conv)
	}
	sort.Strings(out)
	return out
}

// state returns everything node db holds: replication key → canonical encoding.
func state(ctx context.Context, db *storage.DB) (map[string][]byte, error) {
	changes, _, err := db.ChangesSince(ctx, 0, 0)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(changes))
	for _, c := range changes {
		if _, dup := out[c.Key]; dup {
			return nil, fmt.Errorf("key %q listed twice by ChangesSince", c.Key)
		}
		out[c.Key] = c.AppendBinary(nil)
	}
	return out, nil
}

// rootOf returns the digest root of a state as storage computes it.
func rootOf(st map[string][]byte) uint64 {
	var d crdt.Digest
	for key, enc := range st {
		c, err := storage.DecodeChange(enc)
		if err != nil {
			panic(err)
		}
		if c.Conv != "" {
			d.Toggle(key, crdt.PairHash(key, c.Entry.AppendBinary(nil)))
		} else {
			d.Toggle(key, crdt.PairHash(key, c.Map.AppendBinary(nil)))
		}
	}
	return d.Root()
}

// diffStates describes up to max differences between two states.
func diffStates(got, want map[string][]byte, max int) []string {
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case gok && wok && bytes.Equal(g, w):
			continue
		case !gok:
			out = append(out, fmt.Sprintf("missing %s (want %s)", k, describe(w)))
		case !wok:
			out = append(out, fmt.Sprintf("unexpected %s = %s", k, describe(g)))
		default:
			out = append(out, fmt.Sprintf("%s = %s, want %s", k, describe(g), describe(w)))
		}
		if len(out) == max {
			out = append(out, "…")
			break
		}
	}
	return out
}

func describe(enc []byte) string {
	c, err := storage.DecodeChange(enc)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	if c.Conv != "" {
		return fmt.Sprintf("entry %v", c.Entry.ID)
	}
	var parts []string
	for _, name := range c.Map.Names() {
		f, _ := c.Map.Field(name)
		v := string(f.Value)
		if len(v) > 24 {
			v = v[:24] + "…"
		}
		if f.Deleted {
			v = "<deleted>"
		}
		parts = append(parts, fmt.Sprintf("%s=%q@%v", name, v, f.TS))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// checkConverged waits until every node of c is alive with the same digest root, then
// asserts that every node holds exactly the state the model implies.
func (c *testCluster) checkConverged(t testing.TB, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	waitFor(t, within, func() (bool, string) {
		var roots []uint64
		for _, n := range c.nodes {
			db := n.DB()
			if db == nil {
				return false, n.name + " is down"
			}
			d := db.Digest()
			roots = append(roots, d.Root())
		}
		for _, r := range roots[1:] {
			if r != roots[0] {
				return false, fmt.Sprintf("digest roots differ: %x", roots)
			}
		}
		return true, ""
	})
	c.logf("converged in %s (%d acknowledged writes)", time.Since(start).Round(time.Millisecond), c.model.count())
	want := c.model.expected(c.nodes[0].Now())
	first, err := state(ctx, c.nodes[0].DB())
	if err != nil {
		t.Fatalf("%s: read state: %v", c.nodes[0].name, err)
	}
	before := len(want)
	for _, bad := range c.model.acceptDerivedMarkers(want, first) {
		t.Errorf("%s: %s", c.nodes[0].name, bad)
	}
	if n := len(want) - before; n > 0 {
		c.logf("%d erasure markers left by storage beside the acknowledged writes", n)
	}
	for _, n := range c.nodes {
		got, err := state(ctx, n.DB())
		if err != nil {
			t.Fatalf("%s: read state: %v", n.name, err)
		}
		if d := diffStates(got, want, 12); len(d) > 0 {
			t.Errorf("%s: state differs from the acknowledged writes (%d keys, want %d):\n  %s",
				n.name, len(got), len(want), strings.Join(d, "\n  "))
		}
		if dr, wr := n.DB().Digest(), rootOf(got); dr.Root() != wr {
			t.Errorf("%s: digest root %x does not match the stored state's %x", n.name, dr.Root(), wr)
		}
	}
}

// checkHandlers checks, through the handlers of every node, what users see: erased
// accounts are gone, revoked sessions stay revoked, live sessions and profiles show the
// winning writes, message logs are identical with sender order kept, and same-name
// registrations resolve to the first claim everywhere. Call it after checkConverged; it
// writes (logins) only at its very end.
func (w *workload) checkHandlers(t testing.TB) {
	t.Helper()
	c := w.c
	ctx := context.Background()
	now := c.nodes[0].Now()
	for _, n := range c.nodes {
		api := n.API()
		// Accounts.
		for _, a := range w.accounts {
			rec, _ := c.model.record(crdt.UserKey(a.id))
			mu := crdt.ReadUser(a.id, &rec)
			me, err := api.users.Me(ctx, a.id)
			switch {
			case a.erased || mu.Deleted:
				if code := functions.ErrorCode(err); code != functions.ENotFound {
					t.Errorf("%s: Me(erased %s %s) = %v, want %s", n.name, a.username, a.id[:8], err, functions.ENotFound)
				}
				if ss, _ := n.DB().UserSessions(ctx, a.id); len(ss) > 0 {
					t.Errorf("%s: erased %s still has %d sessions", n.name, a.username, len(ss))
				}
				if cs, _ := n.DB().Conversations(ctx, a.id); len(cs) > 0 {
					t.Errorf("%s: erased %s still has %d conversations", n.name, a.username, len(cs))
				}
			case err != nil:
				t.Errorf("%s: Me(%s) = %v", n.name, a.username, err)
			default:
				for _, name := range crdt.ProfileFields {
					want, _ := c.model.lastWrite(crdt.UserKey(a.id), name)
					if got := profileField(me.Profile, name); got != want {
						t.Errorf("%s: %s's %s = %q, want %q (the acknowledged write with the highest HLC)", n.name, a.username, name, got, want)
					}
				}
			}
		}
		// Sessions.
		for _, s := range w.sessions {
			rec, ok := c.model.record(crdt.SessionKey(s.id))
			urec, _ := c.model.record(crdt.UserKey(s.acc.id))
			ms, mu := crdt.ReadSession(s.id, &rec), crdt.ReadUser(s.acc.id, &urec)
			usable := ok && ms.ActiveAt(now) && !mu.Deleted && !mu.Revokes(ms)
			if (s.revoked || s.acc.erased) && usable {
				t.Errorf("%s: model says session %s of %s is usable after an acknowledged revocation", n.name, s.id[:8], s.acc.username)
			}
			p := functions.Principal{UserID: s.acc.id, Username: s.acc.username, SessionID: s.id}
			if !usable {
				if _, err := api.sessions.Authenticate(ctx, s.acc.id, s.id); functions.ErrorCode(err) != functions.EUnauthorized {
					t.Errorf("%s: Authenticate(revoked session %s of %s) = %v, want %s", n.name, s.id[:8], s.acc.username, err, functions.EUnauthorized)
				}
				continue
			}
			if c.model.lostName(s.acc) { // a live session of an account that lost its name
				if _, err := api.sessions.Authenticate(ctx, s.acc.id, s.id); functions.ErrorCode(err) != functions.EUsernameConflict {
					t.Errorf("%s: Authenticate(session %s of %s, which lost its name) = %v, want %s", n.name, s.id[:8], s.acc.username, err, functions.EUsernameConflict)
				}
				continue
			}
			cur, err := api.sessions.Current(ctx, p)
			if err != nil {
				t.Errorf("%s: Current(session %s of %s) = %v", n.name, s.id[:8], s.acc.username, err)
				continue
			}
			if len(cur.Data) != len(ms.Data) {
				t.Errorf("%s: session %s data has %d keys, want %d", n.name, s.id[:8], len(cur.Data), len(ms.Data))
			}
			for _, k := range dataKeys {
				want, ok := c.model.lastWrite(crdt.SessionKey(s.id), crdt.DataPrefix+k)
				if got, has := cur.Data[k]; has != ok || string(got) != want {
					t.Errorf("%s: session %s data[%q] = %s (present %v), want %s (present %v)", n.name, s.id[:8], k, got, has, want, ok)
				}
			}
		}
		// Message logs.
		for _, conv := range c.model.convs() {
			want := c.model.log(conv)
			got, _, err := n.DB().ReadLog(ctx, conv, nil, 0)
			if err != nil {
				t.Fatalf("%s: ReadLog(%s): %v", n.name, conv, err)
			}
			if !sameEntries(got, want) {
				t.Errorf("%s: conversation %s has %d entries, want %d (identical, in (HLC, node, seq) order)", n.name, conv[:8], len(got), len(want))
				continue
			}
			pos := make(map[crdt.EntryID]int, len(got))
			for i, e := range got {
				if _, dup := pos[e.ID]; dup {
					t.Errorf("%s: conversation %s lists entry %v twice", n.name, conv[:8], e.ID)
				}
				pos[e.ID] = i
			}
			for key, ids := range w.sent {
				if key.conv == conv && len(want) > 0 && !inOrder(t, n.name, pos, ids) {
					t.Errorf("%s: sender %s's messages through node %s out of the order sent", n.name, key.sender[:8], key.origin)
				}
			}
			for _, ch := range w.chains {
				if ch.conv == conv && len(want) > 0 && !inOrder(t, n.name, pos, ch.ids) {
					t.Errorf("%s: messages sent with After through several nodes out of the order sent", n.name)
				}
			}
		}
	}
	// Username claims: the first claim among live accounts wins on every node.
	byName := map[string][]*account{}
	for _, a := range w.accounts {
		byName[a.username] = append(byName[a.username], a)
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		claims, _ := c.model.record(crdt.ClaimKey(name))
		var winner string
		for _, id := range crdt.Claimants(&claims) {
			if !c.model.erased(id) {
				winner = id
				break
			}
		}
		for _, n := range c.nodes {
			u, err := n.API().users.Lookup(ctx, name)
			switch {
			case winner == "" && functions.ErrorCode(err) != functions.ENotFound:
				t.Errorf("%s: Lookup(%s) = %v, %v; want not_found (every claimant erased)", n.name, name, u.ID, err)
			case winner != "" && (err != nil || u.ID != winner):
				t.Errorf("%s: Lookup(%s) = %v, %v; want the first claim %s", n.name, name, u.ID, err, winner[:8])
			}
		}
		live := 0
		for _, a := range byName[name] {
			if !c.model.erased(a.id) {
				live++
			}
		}
		if live < 2 {
			continue
		}
		w.conflicts++
		for _, n := range c.nodes {
			ok := 0
			for _, a := range byName[name] {
				if c.model.erased(a.id) {
					continue
				}
				_, err := n.API().sessions.Login(ctx, functions.Login{Username: name, Password: a.password})
				switch {
				case a.id == winner && err != nil:
					t.Errorf("%s: Login(%s) by the first claimant %s = %v", n.name, name, a.id[:8], err)
				case a.id != winner && functions.ErrorCode(err) != functions.EUsernameConflict:
					t.Errorf("%s: Login(%s) by later claimant %s = %v, want %s", n.name, name, a.id[:8], err, functions.EUsernameConflict)
				}
				if err == nil {
					ok++
				}
			}
			if ok != 1 {
				t.Errorf("%s: %d logins to %q succeeded, want exactly 1", n.name, ok, name)
			}
		}
	}
}

// inOrder reports whether ids appear in the log (entry → position) in this order; a
// missing acknowledged message is an error of its own.
func inOrder(t testing.TB, node string, pos map[crdt.EntryID]int, ids []crdt.EntryID) bool {
	t.Helper()
	last, ok := -1, true
	for _, id := range ids {
		i, found := pos[id]
		if !found {
			t.Errorf("%s: acknowledged message %v missing", node, id)
			continue
		}
		if i < last {
			ok = false
		}
		last = i
	}
	return ok
}

func profileField(p functions.Profile, name string) string {
	switch name {
	case crdt.FieldFirstName:
		return p.FirstName
	case crdt.FieldLastName:
		return p.LastName
	case crdt.FieldEmail:
		return p.Email
	case crdt.FieldAddress:
		return p.Address
	}
	return "?"
}

func sameEntries(a, b []crdt.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y crdt.Entry) bool { return x.ID == y.ID && bytes.Equal(x.Data, y.Data) })
}

// ---------------------------------------------------------------------------------------
// Workload.

type account struct {
	id, username, password string
	erased                 bool // an erasure was acknowledged
}

type simSession struct {
	acc     *account
	id      string
	node    int
	origin  crdt.NodeID // the incarnation that created it
	revoked bool        // a revocation was acknowledged
}

type sendKey struct {
	conv, sender string
	origin       crdt.NodeID
}

// sendChain is a sender's messages in one conversation, each sent (through any node)
// with After naming the one before it, so they must stay in this order.
type sendChain struct {
	conv string
	ids  []crdt.EntryID
}

type sendEnd struct {
	id    crdt.EntryID
	chain int
}

// dataKeys are the session data keys the workload writes.
var dataKeys = []string{"k0", "k1", "k2", "k3", "k4", "k5"}

// workload drives the handlers of random live nodes and remembers what was acknowledged.
type workload struct {
	verbose   bool // log each failed operation
	c         *testCluster
	rng       *rand.Rand
	seed      int64
	names     []string
	accounts  []*account
	sessions  []*simSession
	sent      map[sendKey][]crdt.EntryID // acknowledged messages in the order sent
	chains    []sendChain                // messages each sent with After naming the one before
	last      map[[2]string]sendEnd      // sender ID, recipient name → the latest message and its chain
	k         int
	protected map[*account]bool // never erased by random steps
	acked     map[string]int
	failed    map[string]int
	conflicts int
}

func newWorkload(c *testCluster, rng *rand.Rand, seed int64) *workload {
	w := &workload{c: c, rng: rng, seed: seed, sent: map[sendKey][]crdt.EntryID{}, protected: map[*account]bool{},
		last:  map[[2]string]sendEnd{},
		acked: map[string]int{}, failed: map[string]int{}}
	for i := range 5 {
		w.names = append(w.names, fmt.Sprintf("user%d", i))
	}
	return w
}

func (w *workload) next() int { w.k++; return w.k }

func (w *workload) note(op string, err error) bool {
	if err != nil {
		w.failed[op]++
		if w.verbose {
			w.c.logf("%s failed: %v", op, err)
		}
		return false
	}
	w.acked[op]++
	return true
}

func (w *workload) summary() string {
	var parts []string
	for _, op := range []string{"register", "twin", "login", "data", "profile", "touch", "revoke", "revokeall", "erase", "send"} {
		parts = append(parts, fmt.Sprintf("%s %d/%d", op, w.acked[op], w.acked[op]+w.failed[op]))
	}
	return strings.Join(parts, ", ")
}

func ctxOp() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (w *workload) pickAlive() (int, bool) {
	alive := w.c.alive()
	if len(alive) == 0 {
		return 0, false
	}
	return alive[w.rng.IntN(len(alive))], true
}

func pick[T any](rng *rand.Rand, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[rng.IntN(len(xs))], true
}

func (w *workload) liveSessions() []*simSession {
	var out []*simSession
	for _, s := range w.sessions {
		if !s.revoked && !s.acc.erased {
			out = append(out, s)
		}
	}
	return out
}

func (w *workload) liveAccounts() []*account {
	var out []*account
	for _, a := range w.accounts {
		if !a.erased {
			out = append(out, a)
		}
	}
	return out
}

// step runs one random operation.
func (w *workload) step() {
	ops := []struct {
		weight int
		fn     func()
	}{
		{8, w.register}, {3, w.registerTwin}, {12, w.login}, {18, w.patchData}, {12, w.patchProfile},
		{5, w.touch}, {4, w.revoke}, {2, w.revokeAll}, {2, w.erase}, {14, w.send}, {4, w.burst},
	}
	total := 0
	for _, o := range ops {
		total += o.weight
	}
	r := w.rng.IntN(total)
	for _, o := range ops {
		if r < o.weight {
			o.fn()
			return
		}
		r -= o.weight
	}
}

func (w *workload) registerOn(i int, username string) (*account, error) {
	ctx, cancel := ctxOp()
	defer cancel()
	k := w.next()
	pw := fmt.Sprintf("password-%d-%d", w.seed, k)
	u, err := w.c.nodes[i].API().users.Register(ctx, functions.Register{Username: username, Password: pw,
		Profile: functions.Profile{FirstName: fmt.Sprintf("first%d", k), Email: fmt.Sprintf("e%d@example.com", k)}})
	if err != nil {
		return nil, err
	}
	a := &account{id: u.ID, username: username, password: pw}
	w.accounts = append(w.accounts, a)
	return a, nil
}

func (w *workload) register() {
	i, ok := w.pickAlive()
	if !ok {
		return
	}
	name, _ := pick(w.rng, w.names)
	_, err := w.registerOn(i, name)
	w.note("register", err)
}

// registerTwin registers one new name on two sides of a partition.
func (w *workload) registerTwin() {
	alive := w.c.alive()
	var pairs [][2]int
	for _, a := range alive {
		for _, b := range alive {
			if a < b && w.c.group(a) != w.c.group(b) {
				pairs = append(pairs, [2]int{a, b})
			}
		}
	}
	p, ok := pick(w.rng, pairs)
	if !ok {
		return
	}
	name := fmt.Sprintf("twin%d", w.next())
	w.names = append(w.names, name)
	_, err1 := w.registerOn(p[0], name)
	_, err2 := w.registerOn(p[1], name)
	w.note("twin", err1)
	w.note("twin", err2)
}

// login signs a live account in on a node that has its record (an unknown user costs a
// full-price dummy hash).
func (w *workload) login() {
	a, ok := pick(w.rng, w.liveAccounts())
	if !ok {
		return
	}
	var nodes []int
	for _, i := range w.c.alive() {
		if db := w.c.nodes[i].DB(); db != nil {
			if _, ok, _ := db.Record(context.Background(), crdt.UserKey(a.id)); ok {
				nodes = append(nodes, i)
			}
		}
	}
	i, ok := pick(w.rng, nodes)
	if !ok {
		return
	}
	ctx, cancel := ctxOp()
	defer cancel()
	api := w.c.nodes[i].API()
	s, err := api.sessions.Login(ctx, functions.Login{Username: a.username, Password: a.password})
	if w.note("login", err) {
		w.sessions = append(w.sessions, &simSession{acc: a, id: s.ID, node: i, origin: api.db.NodeID()})
	}
}

func principal(s *simSession) functions.Principal {
	return functions.Principal{UserID: s.acc.id, Username: s.acc.username, SessionID: s.id}
}

func (w *workload) patchData() {
	s, ok := pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	patch := functions.DataPatch{Set: map[string]json.RawMessage{}}
	for range 1 + w.rng.IntN(3) {
		key, _ := pick(w.rng, dataKeys)
		if w.rng.IntN(4) == 0 {
			if _, set := patch.Set[key]; !set {
				patch.Delete = append(patch.Delete, key)
			}
		} else if !slices.Contains(patch.Delete, key) {
			patch.Set[key] = json.RawMessage(fmt.Sprintf(`"v%d"`, w.next()))
		}
	}
	ctx, cancel := ctxOp()
	defer cancel()
	_, err := w.c.nodes[i].API().sessions.PatchData(ctx, principal(s), patch)
	w.note("data", err)
}

func (w *workload) patchProfile() {
	a, ok := pick(w.rng, w.liveAccounts())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	var p functions.ProfilePatch
	k := w.next()
	first, last, email, addr := fmt.Sprintf("f%d", k), fmt.Sprintf("l%d", k), fmt.Sprintf("m%d@example.com", k), fmt.Sprintf("%d Main St", k)
	if w.rng.IntN(2) == 0 {
		p.FirstName = &first
	}
	if w.rng.IntN(2) == 0 {
		p.LastName = &last
	}
	if w.rng.IntN(2) == 0 {
		p.Email = &email
	}
	if w.rng.IntN(2) == 0 {
		p.Address = &addr
	}
	ctx, cancel := ctxOp()
	defer cancel()
	_, err := w.c.nodes[i].API().users.UpdateProfile(ctx, a.id, p)
	w.note("profile", err)
}

func (w *workload) touch() {
	s, ok := pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := ctxOp()
	defer cancel()
	_, err := w.c.nodes[i].API().sessions.Authenticate(ctx, s.acc.id, s.id)
	w.note("touch", err)
}

func (w *workload) revoke() {
	s, ok := pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := ctxOp()
	defer cancel()
	if w.note("revoke", w.c.nodes[i].API().sessions.Revoke(ctx, principal(s), s.id)) {
		s.revoked = true
	}
}

func (w *workload) revokeAll() {
	s, ok := pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := ctxOp()
	defer cancel()
	api := w.c.nodes[i].API()
	origin := api.db.NodeID()
	if w.note("revokeall", api.sessions.RevokeAll(ctx, principal(s))) {
		// Sessions created earlier through the same incarnation are before it in HLC
		// order, so they must be revoked; others depend on the clocks (the model knows).
		for _, x := range w.sessions {
			if x.acc == s.acc && x.origin == origin {
				x.revoked = true
			}
		}
	}
}

func (w *workload) erase() {
	a, ok := pick(w.rng, w.liveAccounts())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 || w.protected[a] {
		return
	}
	ctx, cancel := ctxOp()
	defer cancel()
	if w.note("erase", w.c.nodes[i].API().users.Delete(ctx, a.id)) {
		a.erased = true
	}
}

// sendOn sends a message from s to to through node i, half the time naming the sender's
// previous message to the same name as After, which must order it after that one even
// through another node.
func (w *workload) sendOn(i int, s *simSession, to *account) {
	ctx, cancel := ctxOp()
	defer cancel()
	req := functions.Send{To: to.username, Body: fmt.Sprintf("hello %d", w.next())}
	pair := [2]string{s.acc.id, to.username}
	prev, chained := w.last[pair]
	if chained = chained && w.rng.IntN(2) == 0; chained {
		req.After = functions.EntryIDString(prev.id)
	}
	m, err := w.c.nodes[i].API().messages.Send(ctx, principal(s), req)
	if !w.note("send", err) {
		return
	}
	b, err := hex.DecodeString(m.ID)
	if err != nil {
		w.c.t.Errorf("message ID %q: %v", m.ID, err) // the workload may run off the test goroutine
		return
	}
	id, _ := crdt.DecodeEntryID(b)
	conv, ok := w.c.model.convOf(id)
	if !ok {
		w.c.t.Errorf("acknowledged message %v not in the model", id)
		return
	}
	key := sendKey{conv: conv, sender: s.acc.id, origin: id.Origin()}
	w.sent[key] = append(w.sent[key], id)
	if chained && w.chains[prev.chain].conv == conv {
		w.chains[prev.chain].ids = append(w.chains[prev.chain].ids, id)
	} else {
		w.chains = append(w.chains, sendChain{conv: conv, ids: []crdt.EntryID{id}})
		prev.chain = len(w.chains) - 1
	}
	w.last[pair] = sendEnd{id: id, chain: prev.chain}
}

func (w *workload) send() {
	s, ok := pick(w.rng, w.liveSessions())
	to, ok2 := pick(w.rng, w.accounts)
	i, ok3 := w.pickAlive()
	if ok && ok2 && ok3 {
		w.sendOn(i, s, to)
	}
}

// burst sends several messages from one sender through one node in a row.
func (w *workload) burst() {
	s, ok := pick(w.rng, w.liveSessions())
	to, ok2 := pick(w.rng, w.accounts)
	i, ok3 := w.pickAlive()
	if ok && ok2 && ok3 {
		for range 2 + w.rng.IntN(4) {
			w.sendOn(i, s, to)
		}
	}
}
