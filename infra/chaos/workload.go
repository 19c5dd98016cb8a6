package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Workload runs the clients: each worker owns a few users and, one operation at a time,
// registers, logs in, edits session data and profiles, sends messages, reads them back,
// logs out and deletes throw-away accounts, and records every operation with its outcome
// and times. The fourth user of each worker goes only through the load balancer's
// round-robin entry point; the others half straight at a node picked at random, half
// through one of the two entry points. Every user keeps the latest bookmark it was given
// and sends it back.
type Workload struct {
	client  *Client
	lb      string // sticky entry point (round robin for clients without its cookie)
	lbRR    string // plain round-robin entry point
	nodesMu sync.Mutex
	nodes   []*Node // targets of requests straight at a node (the joiner while it is in)
	history *History
	model   *Model
	prober  *Prober
	convs   map[*User]*Conversation // by the reader (the pair's first user)
	run     string                  // run id, part of every generated name

	scenario func() string                            // the scenario now running
	skewed   func(servedBy string, at time.Time) bool // served by a node with a clock ahead

	tokenAhead func(login *Op, at time.Time) bool // a 401 the skewed clock explains

	seq atomic.Int64
}

// Target is where a request goes: an entry point of the load balancer or one node.
type Target struct {
	Name string // "lb", "lb-rr" or the node name
	URL  string
}

// Target names of the load balancer's entry points.
const (
	targetLB   = "lb"
	targetLBRR = "lb-rr"
)

// viaLB reports whether the target is an entry point of the load balancer.
func (t Target) viaLB() bool { return t.Name == targetLB || t.Name == targetLBRR }

func (w *Workload) next() int64 { return w.seq.Add(1) }

// pickTarget chooses where a user's next request goes: always the round-robin entry point
// for a round-robin user; else half the time a node at random, half an entry point.
func (w *Workload) pickTarget(rng *rand.Rand, u *User) Target {
	if u != nil && u.RoundRobin {
		return Target{Name: targetLBRR, URL: w.lbRR}
	}
	switch rng.IntN(4) {
	case 0:
		return Target{Name: targetLB, URL: w.lb}
	case 1:
		return Target{Name: targetLBRR, URL: w.lbRR}
	}
	w.nodesMu.Lock()
	n := w.nodes[rng.IntN(len(w.nodes))]
	w.nodesMu.Unlock()
	return Target{Name: n.Name, URL: n.URL()}
}

// AddTarget makes n a target of requests straight at a node.
func (w *Workload) AddTarget(n *Node) {
	w.nodesMu.Lock()
	defer w.nodesMu.Unlock()
	w.nodes = append(w.nodes, n)
}

// RemoveTarget stops sending requests straight at the node of that name.
func (w *Workload) RemoveTarget(name string) {
	w.nodesMu.Lock()
	defer w.nodesMu.Unlock()
	w.nodes = slices.DeleteFunc(w.nodes, func(n *Node) bool { return n.Name == name })
}

// call is one request of a simulated client.
type call struct {
	user    *User    // the client: its bookmark is sent, and the response's kept (nil: none)
	session *Session // its token authenticates the request (nil: none)
	target  Target
	method  string
	path    string
	xff     string
	body    any
	// noBookmark: send none and keep none (the token's own bookmark must do).
	noBookmark bool
}

// do runs one request as an operation and records it. A 401 for a session that was live
// when the request was sent is marked spurious: nobody had ended it.
func (w *Workload) do(ctx context.Context, op *Op, c call) Result {
	t := c.target
	op.Target = t.Name
	op.Scenario = w.scenario()
	headers := map[string]string{}
	live := false
	if c.session != nil {
		headers["Authorization"] = "Bearer " + c.session.Token
		w.model.mu.Lock()
		live = c.session.live()
		w.model.mu.Unlock()
	}
	if c.xff != "" {
		headers["X-Forwarded-For"] = c.xff
	}
	keep := c.user != nil && !c.noBookmark
	if keep && c.user.Bookmark != "" {
		headers[headerBookmark] = c.user.Bookmark
		op.Bookmark = c.user.Bookmark
	}
	op.Invoke = time.Now()
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	r := w.client.DoHeaders(rctx, t.URL, c.method, c.path, headers, c.body)
	cancel()
	// The response's bookmark covers the request's (the node merges them) and what the
	// response showed or wrote; a response without one (behind, a proxy error) leaves it.
	if b := r.Header.Get(headerBookmark); keep && b != "" {
		c.user.Bookmark = b
	}
	op.Behind = r.Behind()
	if r.Status == 401 && live {
		if w.tokenAhead(c.session.Login, op.Invoke) {
			op.TokenAhead401 = true
		} else {
			op.Spurious401 = true
		}
	}
	op.Ack = r.End
	if op.Ack.IsZero() {
		op.Ack = time.Now()
	}
	op.Status = r.Status
	op.ServedBy = r.ServedBy
	op.ForwardedBy = r.ForwardedBy
	if op.ServedBy == "" && !t.viaLB() {
		op.ServedBy = t.Name
	}
	op.Outcome = r.Outcome
	if ctx.Err() != nil && r.Outcome != OK {
		op.Outcome = Info // cancelled by the end of the run, not by the cluster
	}
	op.Err = r.Describe()
	op.Skewed = w.skewed(op.ServedBy, op.Invoke) || (op.ServedBy == "" && w.skewed("*", op.Invoke))
	op.ClockAhead = w.skewed("*", op.Invoke)
	w.history.Add(op)
	return r
}

// clientAddr is the address a worker claims in X-Forwarded-For: the load balancer trusts
// the host, so each worker is a client of its own and is throttled as one.
func clientAddr(worker int) string { return fmt.Sprintf("198.51.100.%d", 10+worker) }

// entry returns the entry point of the load balancer that a user's setup goes through.
func (w *Workload) entry(u *User) Target {
	if u.RoundRobin {
		return Target{Name: targetLBRR, URL: w.lbRR}
	}
	return Target{Name: targetLB, URL: w.lb}
}

// Register creates a user and logs in its anchor session (never ended) through the user's
// entry point, retrying what may not have happened (an unknown outcome, a refusal while a
// node was behind) until both are acknowledged: setup must not fail. A 401 at login is not
// retried: the registration was acknowledged and its bookmark sent, so it is a refusal
// caused by lag, and the run stops on it.
func (w *Workload) Register(ctx context.Context, u *User) error {
	lb := w.entry(u)
	xff := cmp.Or(u.SetupAddr, clientAddr(u.Worker))
	for attempt := 0; ; attempt++ {
		if attempt == 20 || ctx.Err() != nil {
			return fmt.Errorf("register %s: gave up", u.Name)
		}
		if u.Register == nil || u.Register.Outcome != OK {
			op := &Op{Kind: OpRegister, User: u.Name}
			u.Initial = map[string]string{"first_name": "F" + u.Name, "last_name": "L" + u.Name,
				"email": u.Name + "@example.com", "address": "1 " + u.Name + " Street"}
			r := w.do(ctx, op, call{user: u, target: lb, method: "POST", path: "/v1/users", xff: xff, body: map[string]any{
				"username": u.Name, "password": u.Password, "profile": u.Initial,
			}})
			if r.Status == 409 && u.Register != nil && u.Register.Outcome == Info {
				op.Outcome = OK // an earlier attempt took the name
				op.Err = "taken by an earlier attempt"
			}
			u.Register = op
			if op.Outcome != OK {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			if r.Status == 201 {
				var body struct {
					User apiUser `json:"user"`
				}
				if err := r.Decode(&body); err == nil {
					u.ID = body.User.ID
				}
			}
		}
		s, op := w.login(ctx, u, lb, xff)
		if op.Spurious401 {
			return fmt.Errorf("register %s: login op %d (%s, served by %s) answered 401 after the registration (op %d, served by %s) was acknowledged",
				u.Name, op.ID, op.Target, op.ServedBy, u.Register.ID, u.Register.ServedBy)
		}
		if s == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		u.Anchor = s
		return nil
	}
}

// login opens a session; it returns nil unless the login was acknowledged. A 401 for an
// account whose registration was acknowledged (and which nobody erased) is spurious.
func (w *Workload) login(ctx context.Context, u *User, t Target, xff string) (*Session, *Op) {
	op := &Op{Kind: OpLogin, User: u.Name}
	w.model.mu.Lock()
	known := u.Register != nil && u.Register.Outcome == OK && u.Erase == nil
	req := map[string]string{"username": u.Name, "password": u.Password}
	if u.Device != "" {
		req["device"] = u.Device
	}
	w.model.mu.Unlock()
	r := w.do(ctx, op, call{user: u, target: t, method: "POST", path: "/v1/sessions", xff: xff, body: req})
	if r.Status == 401 && known {
		op.Spurious401 = true
	}
	if op.Outcome != OK {
		return nil, op
	}
	var body struct {
		Token   string     `json:"token"`
		Session apiSession `json:"session"`
		Device  string     `json:"device"`
	}
	if err := r.Decode(&body); err != nil || body.Token == "" {
		op.Outcome, op.Err = Info, "login answered without a token"
		return nil, op
	}
	op.Session = body.Session.ID
	s := &Session{ID: body.Session.ID, Token: body.Token, User: u, Login: op, Keys: map[string]*KeyState{}}
	w.model.mu.Lock()
	u.Sessions = append(u.Sessions, s)
	if body.Device != "" {
		u.Device = body.Device
	}
	if u.ID == "" {
		u.ID = body.Session.UserID
	}
	w.model.mu.Unlock()
	w.prober.SessionLive(op, s.Token)
	return s, op
}

// Worker runs operations on its users until ctx ends.
func (w *Workload) Worker(ctx context.Context, id int, users []*User, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(id)))
	xff := clientAddr(id)
	probes := map[*KeyState]*probe{}
	for ctx.Err() == nil {
		u := users[rng.IntN(len(users))]
		t := w.pickTarget(rng, u)
		switch x := rng.IntN(100); {
		case x < 24:
			w.setKey(ctx, rng, u, t, xff, probes)
		case x < 32:
			w.delKey(ctx, rng, u, t, xff, probes)
		case x < 44:
			w.editProfile(ctx, rng, u, t, xff)
		case x < 62:
			w.send(ctx, u, t, xff)
		case x < 70:
			w.readSession(ctx, w.someSession(rng, u), t, xff)
		case x < 76:
			w.readProfile(ctx, u, t, xff)
		case x < 82:
			w.readMessages(ctx, u, t, xff)
		case x < 89:
			if len(w.extras(u)) < 3 {
				if s, _ := w.login(ctx, u, t, xff); s != nil {
					w.readFresh(ctx, s, w.pickTarget(rng, u), xff)
				}
			}
		case x < 95:
			w.endSession(ctx, rng, u, t, xff)
		default:
			w.throwaway(ctx, rng, id, xff)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(20+rng.IntN(60)) * time.Millisecond):
		}
	}
}

// extras returns the user's live sessions other than the anchor.
func (w *Workload) extras(u *User) []*Session {
	w.model.mu.Lock()
	defer w.model.mu.Unlock()
	var out []*Session
	for _, s := range u.Sessions {
		if s != u.Anchor && s.live() {
			out = append(out, s)
		}
	}
	return out
}

func (w *Workload) someSession(rng *rand.Rand, u *User) *Session {
	ex := w.extras(u)
	if len(ex) == 0 || rng.IntN(2) == 0 {
		return u.Anchor
	}
	return ex[rng.IntN(len(ex))]
}

// sessionData decodes the session a response carries, if it is a 200 with one.
func sessionData(r Result) (map[string]json.RawMessage, bool) {
	if r.Status != 200 {
		return nil, false
	}
	var body struct {
		Session apiSession `json:"session"`
	}
	if r.Decode(&body) != nil {
		return nil, false
	}
	return body.Session.Data, true
}

func (w *Workload) setKey(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string, probes map[*KeyState]*probe) {
	s := w.someSession(rng, u)
	if s.NextKey >= 100 {
		return
	}
	key := fmt.Sprintf("k%03d", s.NextKey)
	s.NextKey++
	val := fmt.Sprintf("%s-%d", w.run, w.next())
	enc, _ := json.Marshal(map[string]any{"v": val, "n": rng.IntN(1000)})
	op := &Op{Kind: OpSet, User: u.Name, Session: s.ID, Key: key, Value: string(enc)}
	r := w.do(ctx, op, call{user: u, session: s, target: t, method: "PATCH", path: "/v1/sessions/current", xff: xff,
		body: map[string]any{"data": map[string]json.RawMessage{key: enc}}})
	if op.Outcome == Fail {
		return
	}
	ks := &KeyState{Set: op, Uncertain: op.Outcome == Info || op.Skewed}
	w.model.mu.Lock()
	s.Keys[key] = ks
	w.model.mu.Unlock()
	if op.Outcome == OK {
		probes[ks] = w.prober.KeySet(op, s.Token, key, string(enc))
		if data, ok := sessionData(r); ok {
			w.checkSessionData(op, s, data)
		}
	}
}

func (w *Workload) delKey(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string, probes map[*KeyState]*probe) {
	s := w.someSession(rng, u)
	w.model.mu.Lock()
	var keys []string
	for k, ks := range s.Keys {
		if ks.Set.Outcome == OK && ks.Del == nil && !ks.Uncertain {
			keys = append(keys, k)
		}
	}
	w.model.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	slices.Sort(keys)
	key := keys[rng.IntN(len(keys))]
	op := &Op{Kind: OpDel, User: u.Name, Session: s.ID, Key: key}
	r := w.do(ctx, op, call{user: u, session: s, target: t, method: "PATCH", path: "/v1/sessions/current", xff: xff,
		body: map[string]any{"data": map[string]any{key: nil}}})
	if op.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	ks := s.Keys[key]
	ks.Del = op
	// A delete while clocks ran ahead may lose to a set made before it in real time.
	if op.Outcome == Info || op.Skewed || op.ClockAhead {
		ks.Uncertain = true
	}
	w.model.mu.Unlock()
	if op.Outcome == OK && !ks.Uncertain {
		w.prober.KeyDel(op, s.Token, key, probes[ks])
	} else {
		w.prober.ForgetProbe(probes[ks])
	}
	if data, ok := sessionData(r); ok && op.Outcome == OK {
		w.checkSessionData(op, s, data)
	}
}

var profileFields = []string{"first_name", "last_name", "email", "address"}

func (w *Workload) editProfile(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string) {
	field := profileFields[rng.IntN(len(profileFields))]
	val := fmt.Sprintf("%s-%d", w.run, w.next())
	if field == "email" {
		val += "@example.com"
	}
	op := &Op{Kind: OpProfile, User: u.Name, Key: field, Value: val}
	r := w.do(ctx, op, call{user: u, session: u.Anchor, target: t, method: "PATCH", path: "/v1/users/me", xff: xff,
		body: map[string]any{"profile": map[string]string{field: val}}})
	if op.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	unsure := op.ClockAhead
	for _, prev := range u.Profile[field] {
		unsure = unsure || prev.Outcome == Info || prev.Skewed || prev.ClockAhead
	}
	u.Profile[field] = append(u.Profile[field], op)
	w.model.mu.Unlock()
	if op.Outcome == OK {
		w.prober.Profile(op, u.Anchor.Token, u.Name, field, val, unsure || op.Skewed)
		if profile, ok := profileOf(r); ok {
			w.checkProfile(op, u, profile)
		}
	} else {
		w.prober.ForgetField(u.Name, field)
	}
}

func (w *Workload) send(ctx context.Context, u *User, t Target, xff string) {
	if u.Partner == nil {
		return
	}
	body := fmt.Sprintf("%s %s→%s #%d", w.run, u.Name, u.Partner.Name, w.next())
	req := map[string]string{"to": u.Partner.Name, "body": body}
	// As the UI does: name the sender's previous message, so that the new one orders after
	// it on every node even if this node has not received it yet.
	for i := len(u.Sent) - 1; i >= 0; i-- {
		if u.Sent[i].MsgID != "" {
			req["after"] = u.Sent[i].MsgID
			break
		}
	}
	op := &Op{Kind: OpSend, User: u.Name, Peer: u.Partner.Name, Value: body}
	r := w.do(ctx, op, call{user: u, session: u.Anchor, target: t, method: "POST", path: "/v1/messages", xff: xff, body: req})
	if op.Outcome == Fail {
		return
	}
	if op.Outcome == OK {
		var resp struct {
			Message apiMessage `json:"message"`
		}
		if err := r.Decode(&resp); err != nil || resp.Message.ID == "" {
			op.Outcome, op.Err = Info, "sent without a message id"
		} else {
			op.MsgID = resp.Message.ID
		}
	}
	w.model.mu.Lock()
	u.Sent = append(u.Sent, op)
	w.model.mu.Unlock()
	if op.Outcome == OK {
		conv := w.convs[u]
		if conv == nil {
			conv = w.convs[u.Partner]
		}
		w.prober.Message(op, conv, op.MsgID)
	}
}

// endSession logs out one of the user's extra sessions, or revokes it from the anchor;
// then, once acknowledged, uses the ended session's token with the bookmark of its end.
func (w *Workload) endSession(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string) {
	ex := w.extras(u)
	if len(ex) == 0 {
		return
	}
	s := ex[rng.IntN(len(ex))]
	var op *Op
	if rng.IntN(2) == 0 {
		op = &Op{Kind: OpLogout, User: u.Name, Session: s.ID}
		w.do(ctx, op, call{user: u, session: s, target: t, method: "DELETE", path: "/v1/sessions/current", xff: xff})
	} else {
		op = &Op{Kind: OpRevoke, User: u.Name, Session: s.ID}
		w.do(ctx, op, call{user: u, session: u.Anchor, target: t, method: "DELETE", path: "/v1/sessions/" + s.ID, xff: xff})
	}
	if op.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	s.Revoke = op
	w.model.mu.Unlock()
	if op.Outcome == OK {
		w.prober.Ended(op, s.Token)
		w.readEnded(ctx, u, s, op, w.pickTarget(rng, u), xff)
	} else {
		w.prober.Forget(s.Token)
	}
}

// throwaway registers an account, logs in, writes a key and deletes the account, each step
// at a target of its own; it stops at the first step that is not acknowledged. After the
// deletion, its session's token must be refused wherever the deletion's bookmark goes.
func (w *Workload) throwaway(ctx context.Context, rng *rand.Rand, worker int, xff string) {
	u := &User{Name: fmt.Sprintf("tmp%s%d", w.run, w.next()), Password: "throwaway-pass-" + strconv.Itoa(rng.IntN(1e6)),
		Ephemeral: true, Worker: worker, Profile: map[string][]*Op{}}
	u.Initial = map[string]string{"first_name": "Tmp", "last_name": "User", "email": u.Name + "@example.com", "address": "nowhere"}
	op := &Op{Kind: OpRegister, User: u.Name}
	w.do(ctx, op, call{user: u, target: w.pickTarget(rng, nil), method: "POST", path: "/v1/users", xff: xff, body: map[string]any{
		"username": u.Name, "password": u.Password, "profile": u.Initial,
	}})
	w.model.mu.Lock()
	u.Register = op
	w.model.Users = append(w.model.Users, u)
	w.model.mu.Unlock()
	if op.Outcome != OK {
		return
	}
	s, _ := w.login(ctx, u, w.pickTarget(rng, nil), xff)
	if s == nil {
		return
	}
	u.Anchor = s
	w.setKey(ctx, rng, u, w.pickTarget(rng, nil), xff, map[*KeyState]*probe{})
	erase := &Op{Kind: OpErase, User: u.Name, Session: s.ID}
	w.do(ctx, erase, call{user: u, session: s, target: w.pickTarget(rng, nil), method: "DELETE", path: "/v1/users/me", xff: xff})
	if erase.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	u.Erase = erase
	w.model.mu.Unlock()
	if erase.Outcome == OK {
		w.prober.Ended(erase, s.Token)
		w.readEnded(ctx, u, s, erase, w.pickTarget(rng, nil), xff)
	} else {
		w.prober.Forget(s.Token)
	}
}

// RunWorkers starts the workers over the regular users and returns a function that stops
// them and waits.
func (w *Workload) RunWorkers(ctx context.Context, workers int, users []*User, seed uint64) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for id := range workers {
		var mine []*User
		for _, u := range users {
			if u.Worker == id {
				mine = append(mine, u)
			}
		}
		if len(mine) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.Worker(ctx, id, mine, seed)
		}()
	}
	return func() { cancel(); wg.Wait() }
}
