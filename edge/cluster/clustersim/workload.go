package clustersim

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
)

// Account is a user the workload registered.
type Account struct {
	ID, Username, Password string
	Erased                 bool // an erasure was acknowledged
}

// Session is a session the workload signed in.
type Session struct {
	Account *Account
	ID      string
	Node    int         // index of the node it signed in on
	Origin  crdt.NodeID // the incarnation that created it
	Revoked bool        // a revocation was acknowledged
}

// Principal returns the caller the handlers see for a request made with s.
func (s *Session) Principal() functions.Principal {
	return functions.Principal{UserID: s.Account.ID, Username: s.Account.Username, SessionID: s.ID}
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

// DataKeys are the session data keys the Workload writes. The slice must not be changed.
var DataKeys = []string{"k0", "k1", "k2", "k3", "k4", "k5"}

// Workload drives the handlers of random live nodes of a cluster and remembers what was
// acknowledged, for CheckHandlers. It is not safe for concurrent use: one goroutine
// drives it at a time.
type Workload struct {
	// Verbose logs each failed operation.
	Verbose bool
	// Accounts are the accounts registered, in order.
	Accounts []*Account
	// Sessions are the sessions signed in, in order; a test that signs in by itself
	// appends its sessions for CheckHandlers to check.
	Sessions []*Session
	// Protected accounts are never erased by random steps.
	Protected map[*Account]bool
	// Failed counts the failed operations by kind (register, login, data, send, …).
	Failed map[string]int

	c         *Cluster
	rng       *rand.Rand
	seed      int64
	names     []string
	sent      map[sendKey][]crdt.EntryID // acknowledged messages in the order sent
	chains    []sendChain                // messages each sent with After naming the one before
	last      map[[2]string]sendEnd      // sender ID, recipient name → the latest message and its chain
	k         int
	acked     map[string]int
	conflicts int
}

// NewWorkload returns a workload over c whose random choices come from rng; seed goes
// into the passwords it chooses.
func NewWorkload(c *Cluster, rng *rand.Rand, seed int64) *Workload {
	w := &Workload{c: c, rng: rng, seed: seed, sent: map[sendKey][]crdt.EntryID{}, Protected: map[*Account]bool{},
		last:  map[[2]string]sendEnd{},
		acked: map[string]int{}, Failed: map[string]int{}}
	for i := range 5 {
		w.names = append(w.names, fmt.Sprintf("user%d", i))
	}
	return w
}

// Next returns a number not returned before, for unique names and values.
func (w *Workload) Next() int { w.k++; return w.k }

func (w *Workload) note(op string, err error) bool {
	if err != nil {
		w.Failed[op]++
		if w.Verbose {
			w.c.Logf("%s failed: %v", op, err)
		}
		return false
	}
	w.acked[op]++
	return true
}

// Summary describes the operations so far: acknowledged of attempted, by kind.
func (w *Workload) Summary() string {
	var parts []string
	for _, op := range []string{"register", "twin", "login", "data", "profile", "touch", "revoke", "revokeall", "erase", "send"} {
		parts = append(parts, fmt.Sprintf("%s %d/%d", op, w.acked[op], w.acked[op]+w.Failed[op]))
	}
	return strings.Join(parts, ", ")
}

// OpContext returns the context of one client operation: ten seconds.
func OpContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 10*time.Second)
}

func (w *Workload) pickAlive() (int, bool) {
	alive := w.c.Alive()
	if len(alive) == 0 {
		return 0, false
	}
	return alive[w.rng.IntN(len(alive))], true
}

// Pick returns a random element of xs, and false if xs is empty.
func Pick[T any](rng *rand.Rand, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[rng.IntN(len(xs))], true
}

func (w *Workload) liveSessions() []*Session {
	var out []*Session
	for _, s := range w.Sessions {
		if !s.Revoked && !s.Account.Erased {
			out = append(out, s)
		}
	}
	return out
}

func (w *Workload) liveAccounts() []*Account {
	var out []*Account
	for _, a := range w.Accounts {
		if !a.Erased {
			out = append(out, a)
		}
	}
	return out
}

// Step runs one random operation on a random live node: a registration (some of one
// name on both sides of a partition), a login, a session data or profile edit, a use,
// a revocation, a sign out everywhere, an erasure, or messages.
func (w *Workload) Step() {
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

// RegisterOn registers username on node i, with a profile, and returns the account if
// it was acknowledged.
func (w *Workload) RegisterOn(i int, username string) (*Account, error) {
	ctx, cancel := OpContext()
	defer cancel()
	k := w.Next()
	pw := fmt.Sprintf("password-%d-%d", w.seed, k)
	u, err := w.c.Nodes[i].API().Users.Register(ctx, functions.Register{Username: username, Password: pw,
		Profile: functions.Profile{FirstName: fmt.Sprintf("first%d", k), Email: fmt.Sprintf("e%d@example.com", k)}})
	if err != nil {
		return nil, err
	}
	a := &Account{ID: u.ID, Username: username, Password: pw}
	w.Accounts = append(w.Accounts, a)
	return a, nil
}

func (w *Workload) register() {
	i, ok := w.pickAlive()
	if !ok {
		return
	}
	name, _ := Pick(w.rng, w.names)
	_, err := w.RegisterOn(i, name)
	w.note("register", err)
}

// registerTwin registers one new name on two sides of a partition.
func (w *Workload) registerTwin() {
	alive := w.c.Alive()
	var pairs [][2]int
	for _, a := range alive {
		for _, b := range alive {
			if a < b && w.c.Group(a) != w.c.Group(b) {
				pairs = append(pairs, [2]int{a, b})
			}
		}
	}
	p, ok := Pick(w.rng, pairs)
	if !ok {
		return
	}
	name := fmt.Sprintf("twin%d", w.Next())
	w.names = append(w.names, name)
	_, err1 := w.RegisterOn(p[0], name)
	_, err2 := w.RegisterOn(p[1], name)
	w.note("twin", err1)
	w.note("twin", err2)
}

// login signs a live account in on a node that has its record (an unknown user costs a
// full-price dummy hash).
func (w *Workload) login() {
	a, ok := Pick(w.rng, w.liveAccounts())
	if !ok {
		return
	}
	var nodes []int
	for _, i := range w.c.Alive() {
		if db := w.c.Nodes[i].DB(); db != nil {
			if _, ok, _ := db.Record(context.Background(), crdt.UserKey(a.ID)); ok {
				nodes = append(nodes, i)
			}
		}
	}
	i, ok := Pick(w.rng, nodes)
	if !ok {
		return
	}
	ctx, cancel := OpContext()
	defer cancel()
	api := w.c.Nodes[i].API()
	s, err := api.Sessions.Login(ctx, functions.Login{Username: a.Username, Password: a.Password})
	if w.note("login", err) {
		w.Sessions = append(w.Sessions, &Session{Account: a, ID: s.ID, Node: i, Origin: api.DB.NodeID()})
	}
}

func (w *Workload) patchData() {
	s, ok := Pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	patch := functions.DataPatch{Set: map[string]json.RawMessage{}}
	for range 1 + w.rng.IntN(3) {
		key, _ := Pick(w.rng, DataKeys)
		if w.rng.IntN(4) == 0 {
			if _, set := patch.Set[key]; !set {
				patch.Delete = append(patch.Delete, key)
			}
		} else if !slices.Contains(patch.Delete, key) {
			patch.Set[key] = json.RawMessage(fmt.Sprintf(`"v%d"`, w.Next()))
		}
	}
	ctx, cancel := OpContext()
	defer cancel()
	_, err := w.c.Nodes[i].API().Sessions.PatchData(ctx, s.Principal(), patch)
	w.note("data", err)
}

func (w *Workload) patchProfile() {
	a, ok := Pick(w.rng, w.liveAccounts())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	var p functions.ProfilePatch
	k := w.Next()
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
	ctx, cancel := OpContext()
	defer cancel()
	_, err := w.c.Nodes[i].API().Users.UpdateProfile(ctx, a.ID, p)
	w.note("profile", err)
}

func (w *Workload) touch() {
	s, ok := Pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := OpContext()
	defer cancel()
	_, err := w.c.Nodes[i].API().Sessions.Authenticate(ctx, s.Account.ID, s.ID)
	w.note("touch", err)
}

func (w *Workload) revoke() {
	s, ok := Pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := OpContext()
	defer cancel()
	if w.note("revoke", w.c.Nodes[i].API().Sessions.Revoke(ctx, s.Principal(), s.ID)) {
		s.Revoked = true
	}
}

func (w *Workload) revokeAll() {
	s, ok := Pick(w.rng, w.liveSessions())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 {
		return
	}
	ctx, cancel := OpContext()
	defer cancel()
	api := w.c.Nodes[i].API()
	origin := api.DB.NodeID()
	if w.note("revokeall", api.Sessions.RevokeAll(ctx, s.Principal())) {
		// Sessions created earlier through the same incarnation are before it in HLC
		// order, so they must be revoked; others depend on the clocks (the model knows).
		for _, x := range w.Sessions {
			if x.Account == s.Account && x.Origin == origin {
				x.Revoked = true
			}
		}
	}
}

func (w *Workload) erase() {
	a, ok := Pick(w.rng, w.liveAccounts())
	i, ok2 := w.pickAlive()
	if !ok || !ok2 || w.Protected[a] {
		return
	}
	ctx, cancel := OpContext()
	defer cancel()
	if w.note("erase", w.c.Nodes[i].API().Users.Delete(ctx, a.ID)) {
		a.Erased = true
	}
}

// SendOn sends a message from s to to through node i, half the time naming the sender's
// previous message to the same name as After, which must order it after that one even
// through another node.
func (w *Workload) SendOn(i int, s *Session, to *Account) {
	ctx, cancel := OpContext()
	defer cancel()
	req := functions.Send{To: to.Username, Body: fmt.Sprintf("hello %d", w.Next())}
	pair := [2]string{s.Account.ID, to.Username}
	prev, chained := w.last[pair]
	if chained = chained && w.rng.IntN(2) == 0; chained {
		req.After = functions.EntryIDString(prev.id)
	}
	m, err := w.c.Nodes[i].API().Messages.Send(ctx, s.Principal(), req)
	if !w.note("send", err) {
		return
	}
	b, err := hex.DecodeString(m.ID)
	if err != nil {
		w.c.t.Errorf("message ID %q: %v", m.ID, err) // the workload may run off the test goroutine
		return
	}
	id, _ := crdt.DecodeEntryID(b)
	conv, ok := w.c.Model.ConvOf(id)
	if !ok {
		w.c.t.Errorf("acknowledged message %v not in the model", id)
		return
	}
	key := sendKey{conv: conv, sender: s.Account.ID, origin: id.Origin()}
	w.sent[key] = append(w.sent[key], id)
	if chained && w.chains[prev.chain].conv == conv {
		w.chains[prev.chain].ids = append(w.chains[prev.chain].ids, id)
	} else {
		w.chains = append(w.chains, sendChain{conv: conv, ids: []crdt.EntryID{id}})
		prev.chain = len(w.chains) - 1
	}
	w.last[pair] = sendEnd{id: id, chain: prev.chain}
}

func (w *Workload) send() {
	s, ok := Pick(w.rng, w.liveSessions())
	to, ok2 := Pick(w.rng, w.Accounts)
	i, ok3 := w.pickAlive()
	if ok && ok2 && ok3 {
		w.SendOn(i, s, to)
	}
}

// burst sends several messages from one sender through one node in a row.
func (w *Workload) burst() {
	s, ok := Pick(w.rng, w.liveSessions())
	to, ok2 := Pick(w.rng, w.Accounts)
	i, ok3 := w.pickAlive()
	if ok && ok2 && ok3 {
		for range 2 + w.rng.IntN(4) {
			w.SendOn(i, s, to)
		}
	}
}

// MustRegister registers username on node, failing t if that is not acknowledged.
func (w *Workload) MustRegister(t testing.TB, node int, username string) *Account {
	t.Helper()
	a, err := w.RegisterOn(node, username)
	if err != nil {
		t.Fatalf("register %s on n%d: %v", username, node, err)
	}
	return a
}

// MustRegisterWhere registers users on node (named prefix0, prefix1, …), up to tries of
// them, until want accepts one, and returns it; it fails t if none is accepted. Tests use
// it to find a user whose partition placement puts where the test needs it.
func (w *Workload) MustRegisterWhere(t testing.TB, node int, prefix string, tries int, want func(*Account) bool) *Account {
	t.Helper()
	for k := range tries {
		if a := w.MustRegister(t, node, fmt.Sprintf("%s%d", prefix, k)); want(a) {
			return a
		}
	}
	t.Fatalf("none of %d users registered on n%d is placed as the test needs", tries, node)
	return nil
}

// MustLogin signs a in on node and adds the session to Sessions, failing t if that is
// not acknowledged.
func (w *Workload) MustLogin(t testing.TB, node int, a *Account) *Session {
	t.Helper()
	n := w.c.Nodes[node]
	s, err := n.API().Sessions.Login(context.Background(), functions.Login{Username: a.Username, Password: a.Password})
	if err != nil {
		t.Fatalf("login %s on %s: %v", a.Username, n.Name, err)
	}
	ss := &Session{Account: a, ID: s.ID, Node: node, Origin: n.DB().NodeID()}
	w.Sessions = append(w.Sessions, ss)
	return ss
}

// Steps runs k random steps, one every every.
func (w *Workload) Steps(k int, every time.Duration) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for range k {
		<-tick.C
		w.Step()
	}
}

// Conflicts returns how many usernames CheckHandlers found claimed by more than one live
// account (checked: the first claim wins everywhere).
func (w *Workload) Conflicts() int { return w.conflicts }

// CrossChains returns how many chains of messages sent with After naming the one before
// went through more than one node.
func (w *Workload) CrossChains() int {
	n := 0
	for _, ch := range w.chains {
		if slices.ContainsFunc(ch.ids, func(id crdt.EntryID) bool { return id.Origin() != ch.ids[0].Origin() }) {
			n++
		}
	}
	return n
}
