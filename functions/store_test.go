package functions

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// fakeTime is a physical clock the test moves by hand. It is safe for concurrent use.
type fakeTime struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeTime) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeTime) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

// fakeStore is an in-memory Store: one replica, nothing replicated. Transactions run one at
// a time and buffer their writes, which take effect only when fn returns nil. Maps and
// entries are copied on the way in and out, as a real store decodes them from bytes, so a
// handler that edits what it read cannot change stored state. The store's lock is held
// while fn runs, so a handler that calls the Store from inside a transaction deadlocks the
// test instead of passing by luck. It is safe for concurrent use.
type fakeStore struct {
	clock *crdt.Clock // stamps appended entries

	mu      sync.Mutex
	records map[string]crdt.Map
	logs    map[string]*crdt.Log
	updates int   // Update calls, committed or not
	err     error // when set, every method fails with it
}

var (
	_ Store    = (*fakeStore)(nil)
	_ AppStore = (*fakeStore)(nil)
)

func newFakeStore(clock *crdt.Clock) *fakeStore {
	return &fakeStore{clock: clock, records: make(map[string]crdt.Map), logs: make(map[string]*crdt.Log)}
}

func (s *fakeStore) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.err
}

func (s *fakeStore) Record(ctx context.Context, key string) (crdt.Map, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return crdt.Map{}, false, err
	}
	m, ok := s.records[key]
	if !ok {
		return crdt.Map{}, false, nil
	}
	return m.Clone(), true, nil
}

func (s *fakeStore) Records(ctx context.Context, keys ...string) ([]crdt.Map, []bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, nil, err
	}
	ms, oks := make([]crdt.Map, len(keys)), make([]bool, len(keys))
	for i, key := range keys {
		if m, ok := s.records[key]; ok {
			ms[i], oks[i] = m.Clone(), true
		}
	}
	return ms, oks, nil
}

func (s *fakeStore) Update(ctx context.Context, fn func(tx Tx) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.updates++
	if err := s.check(ctx); err != nil {
		return err
	}
	tx := &fakeTx{s: s, records: make(map[string]crdt.Map), logs: make(map[string]*crdt.Log)}
	defer func() { tx.done = true }()
	if err := fn(tx); err != nil {
		return err
	}
	maps.Copy(s.records, tx.records)
	maps.Copy(s.logs, tx.logs)
	return nil
}

func (s *fakeStore) RecordsUnder(ctx context.Context, prefix string, limit int) ([]string, []crdt.Map, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, nil, false, err
	}
	var keys []string
	for k := range s.records {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	more := len(keys) > limit
	keys = keys[:min(len(keys), max(limit, 0))]
	ms := make([]crdt.Map, len(keys))
	for i, k := range keys {
		m := s.records[k]
		ms[i] = m.Clone()
	}
	return keys, ms, more, nil
}

// AppSubjects implements SubjectLister: every subject of app, in one page.
func (s *fakeStore) AppSubjects(ctx context.Context, app, after string) ([]string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, "", err
	}
	var ids []string
	for key, m := range s.records {
		if id, ok := strings.CutPrefix(key, crdt.UserPrefix); ok && id > after {
			if u := crdt.ReadUserMeta(id, &m); u.App == app {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids, "", nil
}

func (s *fakeStore) UserSessions(ctx context.Context, userID string) ([]crdt.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var out []crdt.Session
	for key, m := range s.records {
		id, ok := strings.CutPrefix(key, crdt.SessionPrefix)
		if !ok {
			continue
		}
		c := m.Clone()
		if ss := crdt.ReadSession(id, &c); ss.UserID == userID && !ss.Revoked { // as storage: none revoked by its flag
			out = append(out, ss)
		}
	}
	return out, nil
}

func (s *fakeStore) ReadLog(ctx context.Context, conv string, after crdt.Cursor, limit int) ([]crdt.Entry, crdt.Cursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, nil, err
	}
	l := s.logs[conv]
	if l == nil {
		l = new(crdt.Log)
	}
	entries, next := l.Read(after, limit)
	return cloneEntries(entries), next, nil
}

func (s *fakeStore) Conversations(ctx context.Context, userID string) ([]ConversationInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	var out []ConversationInfo
	for conv, l := range s.logs {
		a, b, ok := crdt.Participants(conv)
		if !ok || l.Len() == 0 {
			continue
		}
		with := ""
		switch userID {
		case a:
			with = b
		case b:
			with = a
		default:
			continue
		}
		last := l.Entries()[l.Len()-1]
		out = append(out, ConversationInfo{ID: conv, With: with, Last: cloneEntries([]crdt.Entry{last})[0], Count: l.Len()})
	}
	slices.SortFunc(out, func(x, y ConversationInfo) int { return y.Last.ID.Compare(x.Last.ID) })
	return out, nil
}

func cloneEntries(es []crdt.Entry) []crdt.Entry {
	out := make([]crdt.Entry, len(es))
	for i, e := range es {
		out[i] = crdt.Entry{ID: e.ID, Data: slices.Clone(e.Data)}
	}
	return out
}

// merge merges update into the record at key outside any transaction, as replication from
// another node does.
func (s *fakeStore) merge(key string, update crdt.Map) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.records[key]
	mergeRecord(key, &m, update)
	s.records[key] = m
}

// Contested reads the claim record, as storage's index would report it.
func (s *fakeStore) Contested(username string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.records[crdt.ClaimKey(username)]
	return len(crdt.Claimants(&m)) > 1
}

// insert adds e to the log conv outside any transaction, as replication from another node
// does: the clock first observes its timestamp.
func (s *fakeStore) insert(conv string, e crdt.Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.clock.Observe(e.ID.TS); err != nil {
		return // storage refuses a change too far ahead
	}
	if s.logs[conv] == nil {
		s.logs[conv] = new(crdt.Log)
	}
	s.logs[conv].Insert(e)
}

// record returns a copy of the record at key, or the empty Map.
func (s *fakeStore) record(key string) crdt.Map {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.records[key]
	return m.Clone()
}

// entries returns a copy of the log conv.
func (s *fakeStore) entries(conv string) []crdt.Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l := s.logs[conv]; l != nil {
		return cloneEntries(l.Entries())
	}
	return nil
}

func (s *fakeStore) updateCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updates
}

func (s *fakeStore) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

var errTxDone = errors.New("fake store: transaction used after Update returned")

// fakeTx buffers a transaction's writes. The store's mutex is held while it runs.
type fakeTx struct {
	s       *fakeStore
	records map[string]crdt.Map  // written records, whole
	logs    map[string]*crdt.Log // appended-to logs, whole
	done    bool
}

func (tx *fakeTx) current(key string) (crdt.Map, bool) {
	if m, ok := tx.records[key]; ok {
		return m.Clone(), true
	}
	m, ok := tx.s.records[key]
	return m.Clone(), ok
}

func (tx *fakeTx) Record(key string) (crdt.Map, bool, error) {
	if tx.done {
		return crdt.Map{}, false, errTxDone
	}
	m, ok := tx.current(key)
	return m, ok, nil
}

func (tx *fakeTx) Merge(key string, update crdt.Map) (crdt.Map, error) {
	if tx.done {
		return crdt.Map{}, errTxDone
	}
	m, _ := tx.current(key)
	mergeRecord(key, &m, update)
	tx.records[key] = m
	return m.Clone(), nil
}

// mergeRecord merges update into the record key as storage does, key-value records
// compacted (crdt.CompactKV). Unlike storage, it keeps expired records.
func mergeRecord(key string, m *crdt.Map, update crdt.Map) {
	if strings.HasPrefix(key, crdt.KVPrefix) {
		update = update.Clone()
		crdt.CompactKV(&update, 0)
		m.Merge(update)
		crdt.CompactKV(m, 0)
		return
	}
	m.Merge(update)
}

// KVRange implements KVLister over the store's records: in the order of their
// partition, then key, as storage.DB does.
func (s *fakeStore) KVRange(ctx context.Context, app string, from int, after string, held func(p int) bool,
	visit func(p int, key string, m crdt.Map) bool) error {
	s.mu.Lock()
	if err := s.check(ctx); err != nil {
		s.mu.Unlock()
		return err
	}
	type rec struct {
		pos KVPos
		m   crdt.Map
	}
	var recs []rec
	for k, m := range s.records {
		a, key, ok := crdt.ParseKVKey(k)
		pos := KVPosOf(a, key)
		if !ok || a != app || pos.Compare(KVPos{Partition: from, Key: after}) <= 0 || (held != nil && !held(pos.Partition)) {
			continue
		}
		recs = append(recs, rec{pos, m.Clone()})
	}
	s.mu.Unlock()
	slices.SortFunc(recs, func(a, b rec) int { return a.pos.Compare(b.pos) })
	for _, r := range recs {
		if !visit(r.pos.Partition, r.pos.Key, r.m) {
			break
		}
	}
	return nil
}

func (tx *fakeTx) Append(conv string, msg crdt.Message) (crdt.Entry, error) {
	if tx.done {
		return crdt.Entry{}, errTxDone
	}
	l := tx.logs[conv]
	if l == nil {
		l = new(crdt.Log)
		if stored := tx.s.logs[conv]; stored != nil {
			l.Merge(stored)
		}
		tx.logs[conv] = l
	}
	node := tx.s.clock.Node()
	e := crdt.Entry{ID: crdt.EntryID{TS: tx.s.clock.Next(), Seq: l.NextSeq(node)}, Data: msg.AppendBinary(nil)}
	if !l.Insert(e) {
		return crdt.Entry{}, errors.New("fake store: duplicate entry id")
	}
	return e, nil
}

func (tx *fakeTx) Entry(conv string, id crdt.EntryID) (crdt.Entry, bool, error) {
	if tx.done {
		return crdt.Entry{}, false, errTxDone
	}
	for _, l := range []*crdt.Log{tx.logs[conv], tx.s.logs[conv]} {
		if l == nil {
			continue
		}
		for _, e := range l.Entries() {
			if e.ID == id {
				return crdt.Entry{ID: id, Data: bytes.Clone(e.Data)}, true, nil
			}
		}
	}
	return crdt.Entry{}, false, nil
}

// checkInvariants fails t if the store holds state no handler should leave behind: a
// session or user record without its identifying field (its owner; a username, or a
// subject's name): a write to a record that did not exist; or a log entry that is not a
// message between the conversation's participants.
func (s *fakeStore) checkInvariants(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for key, m := range s.records {
		switch {
		case strings.HasPrefix(key, crdt.SessionPrefix):
			if _, ok := m.Get(crdt.FieldUser); !ok {
				t.Errorf("record %q has no %q field: a write to a session that did not exist", key, crdt.FieldUser)
			}
		case strings.HasPrefix(key, crdt.UserPrefix):
			_, user := m.Get(crdt.FieldUsername)
			_, subject := m.Get(crdt.FieldSubject)
			if !user && !subject {
				t.Errorf("record %q has neither %q nor %q: a write to a user that did not exist", key, crdt.FieldUsername, crdt.FieldSubject)
			}
		}
	}
	for conv, l := range s.logs {
		a, b, _ := crdt.Participants(conv)
		for _, e := range l.Entries() {
			m, err := crdt.DecodeMessage(e.Data)
			if err != nil {
				t.Errorf("log %q entry %v: %v", conv, e.ID, err)
				continue
			}
			if crdt.ConversationID(m.From, m.To) != crdt.ConversationID(a, b) {
				t.Errorf("log %q entry %v is from %q to %q", conv, e.ID, m.From, m.To)
			}
		}
	}
}

// Test configuration: a session lives a day, idles out after two hours, and records a use
// at most once a minute.
const (
	testNode       crdt.NodeID = 1
	testTTL                    = 24 * time.Hour
	testIdleTTL                = 2 * time.Hour
	testTouchEvery             = time.Minute
	testPassword               = "correct horse"
)

// testEpoch is the fake physical time every test starts at.
var testEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// testEnv wires the handlers to a fake store and a fake clock on one node.
type testEnv struct {
	now      *fakeTime
	clock    *crdt.Clock
	store    *fakeStore
	pw       *Passwords
	users    *Users
	sessions *Sessions
	messages *Messages
	apps     *Apps
}

// newTestEnv returns handlers over an empty fake store, with argon2 at 64 KiB so that
// hashing is cheap. Its cleanup checks the store's invariants.
func newTestEnv(tb testing.TB) *testEnv {
	tb.Helper()
	now := &fakeTime{now: testEpoch}
	clock := crdt.NewClock(testNode, now.Now, time.Minute)
	store := newFakeStore(clock)
	pw := newPasswords(1, 64, 4)
	e := &testEnv{
		now: now, clock: clock, store: store, pw: pw,
		users: &Users{Store: store, Clock: clock, Passwords: pw},
		sessions: &Sessions{Store: store, Clock: clock, Passwords: pw,
			TTL: testTTL, IdleTTL: testIdleTTL, TouchEvery: testTouchEvery},
		messages: &Messages{Store: store, Clock: clock},
		apps:     &Apps{Store: store, Clock: clock},
	}
	tb.Cleanup(func() { store.checkInvariants(tb) })
	return e
}

func (e *testEnv) mustRegister(tb testing.TB, username, password string) User {
	tb.Helper()
	u, err := e.users.Register(context.Background(), Register{
		Username: username, Password: password,
		Profile: Profile{FirstName: "First " + username, LastName: "Last", Email: username + "@example.com", Address: "1 Main St"},
	})
	if err != nil {
		tb.Fatalf("Register(%q): %v", username, err)
	}
	return u
}

// mustLogin signs in and returns the session and the principal its token stands for.
func (e *testEnv) mustLogin(tb testing.TB, username, password string) (Session, Principal) {
	tb.Helper()
	s, err := e.sessions.Login(context.Background(), Login{Username: username, Password: password})
	if err != nil {
		tb.Fatalf("Login(%q): %v", username, err)
	}
	return s, Principal{UserID: s.UserID, Username: s.Username, SessionID: s.ID}
}

// claimElsewhere delivers, as replication from a node in another partition would, the
// user record and username claim of account id, registered there at ts.
func (e *testEnv) claimElsewhere(tb testing.TB, id, username, password string, ts crdt.Timestamp) {
	tb.Helper()
	hash, err := e.pw.Hash(context.Background(), password)
	if err != nil {
		tb.Fatalf("Hash: %v", err)
	}
	e.store.merge(crdt.UserKey(id), crdt.NewUser(username, hash, nil, ts))
	e.store.merge(crdt.ClaimKey(username), crdt.NewClaim(id, ts))
}

// wantCode fails t unless err carries code ("" for no error).
func wantCode(tb testing.TB, err error, code string) {
	tb.Helper()
	if got := ErrorCode(err); got != code {
		tb.Fatalf("ErrorCode=%q, want %q (err: %v)", got, code, err)
	}
}

// sessionRecord returns session id as the store holds it.
func (e *testEnv) sessionRecord(tb testing.TB, id string) crdt.Session {
	tb.Helper()
	m := e.store.record(crdt.SessionKey(id))
	if m.Len() == 0 {
		tb.Fatalf("no session %s", id)
	}
	return crdt.ReadSession(id, &m)
}
