package clustersim

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Store adapts *storage.DB to functions.Store, as edge/store.go does, and records every
// committed write in Model: the merge updates and log appends of each Update that
// returned nil (durable on acknowledgement). A test that writes around the handlers
// writes through a Store, so that the model, and so CheckConverged, knows the write.
type Store struct {
	*storage.DB
	Model *Model
}

var _ functions.Store = Store{}

// Update implements functions.Store.
func (s Store) Update(ctx context.Context, fn func(tx functions.Tx) error) error {
	var w modelWrites
	err := s.DB.Update(ctx, func(tx *storage.Tx) error {
		w = modelWrites{} // the committer may run fn again if its batch is retried
		return fn(recordingTx{tx: tx, w: &w})
	})
	if err == nil {
		s.Model.add(w)
	}
	return err
}

// Conversations implements functions.Store.
func (s Store) Conversations(ctx context.Context, userID string) ([]functions.ConversationInfo, error) {
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

// Model is the oracle: the merge of every acknowledged write. Merging is commutative,
// associative and idempotent, so whatever the network did, a converged cluster must hold
// exactly this, minus what the merge rules delete (erased users' personal fields, their
// sessions and messages; expired sessions), plus the erasure markers that storage leaves
// of its own accord (see acceptDerivedMarkers). The markers an erasure writes (Users.Delete)
// are acknowledged writes like any other, recorded here, and never deleted.
type Model struct {
	mu      sync.Mutex
	recs    map[string]crdt.Map
	entries map[string]map[crdt.EntryID][]byte // conv → entry → data
	lww     map[string]map[string]crdt.Field   // key → field → acknowledged write with the highest HLC
	writes  int
}

func newModel() *Model {
	return &Model{recs: make(map[string]crdt.Map), entries: make(map[string]map[crdt.EntryID][]byte),
		lww: make(map[string]map[string]crdt.Field)}
}

// Count returns the number of acknowledged writes so far.
func (m *Model) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.writes
}

func (m *Model) add(w modelWrites) {
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

// LastWrite returns the value of the acknowledged write to LWW field name of key with
// the highest HLC, and false if there is none or it is a deletion.
func (m *Model) LastWrite(key, name string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.lww[key][name]
	if !ok || f.Deleted {
		return "", false
	}
	return string(f.Value), true
}

// Record returns a copy of the model's record key, and whether any write reached it.
func (m *Model) Record(key string) (crdt.Map, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[key]
	return r.Clone(), ok
}

func (m *Model) erasedLocked(user string) bool {
	r, ok := m.recs[crdt.UserKey(user)]
	if !ok {
		return false
	}
	_, del := r.Flag(crdt.FieldDeleted)
	return del
}

// Erased reports whether an erasure of user was acknowledged.
func (m *Model) Erased(user string) bool {
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
func (m *Model) lostName(a *Account) bool {
	claims, _ := m.Record(crdt.ClaimKey(a.Username))
	for _, id := range crdt.Claimants(&claims) {
		if u, _ := m.Record(crdt.UserKey(id)); id != a.ID && crdt.ReadUser(id, &u).Deleted {
			continue
		}
		return id != a.ID
	}
	return false
}

// Expected returns the converged state the model implies at time now: replication key →
// canonical encoding of its storage.Change.
func (m *Model) Expected(now time.Time) map[string][]byte {
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
			if s.Revoked { // a revoked session sheds its data, as storage does
				r.Prune(func(name string, _ crdt.Field) bool { return strings.HasPrefix(name, crdt.DataPrefix) })
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
func (m *Model) acceptDerivedMarkers(want, got map[string][]byte) []string {
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
		if err != nil || !m.Erased(msg.From) {
			bad = append(bad, fmt.Sprintf("marker %s names %.8s, who is not erased", key, msg.From))
			continue
		}
		want[key] = enc
	}
	return bad
}

// Log returns the model's entries of conv in log order, or nil if a participant is erased.
func (m *Model) Log(conv string) []crdt.Entry {
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

// ConvOf returns the conversation holding entry id, and false if no acknowledged write
// appended it.
func (m *Model) ConvOf(id crdt.EntryID) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for conv, es := range m.entries {
		if _, ok := es[id]; ok {
			return conv, true
		}
	}
	return "", false
}

// Convs returns the conversations with acknowledged messages, sorted.
func (m *Model) Convs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for conv := range m.entries {
		out = append(out, conv)
	}
	sort.Strings(out)
	return out
}
