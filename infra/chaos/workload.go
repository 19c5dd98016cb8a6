package main

import (
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
// registers, logs in, edits session data and profiles, sends messages, logs out and
// deletes throw-away accounts — half through the load balancer, half straight at a node
// picked at random — and records every operation with its outcome and times.
type Workload struct {
	client  *Client
	lb      string
	nodes   []*Node
	history *History
	model   *Model
	prober  *Prober
	convs   map[*User]*Conversation // by the reader (the pair's first user)
	run     string                  // run id, part of every generated name

	scenario func() string                            // the scenario now running
	skewed   func(servedBy string, at time.Time) bool // served by a node with a clock ahead

	seq atomic.Int64
}

// Target is where a request goes: the load balancer or one node.
type Target struct {
	Name string // "lb" or the node name
	URL  string
}

func (w *Workload) next() int64 { return w.seq.Add(1) }

func (w *Workload) pickTarget(rng *rand.Rand) Target {
	if rng.IntN(2) == 0 {
		return Target{Name: "lb", URL: w.lb}
	}
	n := w.nodes[rng.IntN(len(w.nodes))]
	return Target{Name: n.Name, URL: n.URL()}
}

// do runs one request as an operation and records it.
func (w *Workload) do(ctx context.Context, op *Op, t Target, method, path, token, xff string, body any) Result {
	op.Target = t.Name
	op.Scenario = w.scenario()
	op.Invoke = time.Now()
	rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	r := w.client.Do(rctx, t.URL, method, path, token, xff, body)
	cancel()
	op.Ack = r.End
	if op.Ack.IsZero() {
		op.Ack = time.Now()
	}
	op.Status = r.Status
	op.ServedBy = r.ServedBy
	if op.ServedBy == "" && t.Name != "lb" {
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

// Register creates a user and logs in its anchor session (never ended), retrying through
// the load balancer until both are acknowledged: setup must not fail.
func (w *Workload) Register(ctx context.Context, u *User) error {
	lb := Target{Name: "lb", URL: w.lb}
	xff := clientAddr(u.Worker)
	for attempt := 0; ; attempt++ {
		if attempt == 20 || ctx.Err() != nil {
			return fmt.Errorf("register %s: gave up", u.Name)
		}
		if u.Register == nil || u.Register.Outcome != OK {
			op := &Op{Kind: OpRegister, User: u.Name}
			u.Initial = map[string]string{"first_name": "F" + u.Name, "last_name": "L" + u.Name,
				"email": u.Name + "@example.com", "address": "1 " + u.Name + " Street"}
			r := w.do(ctx, op, lb, "POST", "/v1/users", "", xff, map[string]any{
				"username": u.Name, "password": u.Password, "profile": u.Initial,
			})
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
		s, _ := w.login(ctx, u, lb, xff)
		if s == nil {
			time.Sleep(200 * time.Millisecond)
			continue
		}
		u.Anchor = s
		return nil
	}
}

// login opens a session; it returns nil unless the login was acknowledged.
func (w *Workload) login(ctx context.Context, u *User, t Target, xff string) (*Session, *Op) {
	op := &Op{Kind: OpLogin, User: u.Name}
	r := w.do(ctx, op, t, "POST", "/v1/sessions", "", xff, map[string]string{"username": u.Name, "password": u.Password})
	if op.Outcome != OK {
		return nil, op
	}
	var body struct {
		Token   string     `json:"token"`
		Session apiSession `json:"session"`
	}
	if err := r.Decode(&body); err != nil || body.Token == "" {
		op.Outcome, op.Err = Info, "login answered without a token"
		return nil, op
	}
	op.Session = body.Session.ID
	s := &Session{ID: body.Session.ID, Token: body.Token, User: u, Login: op, Keys: map[string]*KeyState{}}
	w.model.mu.Lock()
	u.Sessions = append(u.Sessions, s)
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
		t := w.pickTarget(rng)
		switch x := rng.IntN(100); {
		case x < 30:
			w.setKey(ctx, rng, u, t, xff, probes)
		case x < 40:
			w.delKey(ctx, rng, u, t, xff, probes)
		case x < 55:
			w.editProfile(ctx, rng, u, t, xff)
		case x < 80:
			w.send(ctx, u, t, xff)
		case x < 88:
			if len(w.extras(u)) < 3 {
				w.login(ctx, u, t, xff)
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
	w.do(ctx, op, t, "PATCH", "/v1/sessions/current", s.Token, xff, map[string]any{"data": map[string]json.RawMessage{key: enc}})
	if op.Outcome == Fail {
		return
	}
	ks := &KeyState{Set: op, Uncertain: op.Outcome == Info || op.Skewed}
	w.model.mu.Lock()
	s.Keys[key] = ks
	w.model.mu.Unlock()
	if op.Outcome == OK {
		probes[ks] = w.prober.KeySet(op, s.Token, key, string(enc))
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
	w.do(ctx, op, t, "PATCH", "/v1/sessions/current", s.Token, xff, map[string]any{"data": map[string]any{key: nil}})
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
}

var profileFields = []string{"first_name", "last_name", "email", "address"}

func (w *Workload) editProfile(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string) {
	field := profileFields[rng.IntN(len(profileFields))]
	val := fmt.Sprintf("%s-%d", w.run, w.next())
	if field == "email" {
		val += "@example.com"
	}
	op := &Op{Kind: OpProfile, User: u.Name, Key: field, Value: val}
	w.do(ctx, op, t, "PATCH", "/v1/users/me", u.Anchor.Token, xff, map[string]any{"profile": map[string]string{field: val}})
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
	r := w.do(ctx, op, t, "POST", "/v1/messages", u.Anchor.Token, xff, req)
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

// endSession logs out one of the user's extra sessions, or revokes it from the anchor.
func (w *Workload) endSession(ctx context.Context, rng *rand.Rand, u *User, t Target, xff string) {
	ex := w.extras(u)
	if len(ex) == 0 {
		return
	}
	s := ex[rng.IntN(len(ex))]
	var op *Op
	if rng.IntN(2) == 0 {
		op = &Op{Kind: OpLogout, User: u.Name, Session: s.ID}
		w.do(ctx, op, t, "DELETE", "/v1/sessions/current", s.Token, xff, nil)
	} else {
		op = &Op{Kind: OpRevoke, User: u.Name, Session: s.ID}
		w.do(ctx, op, t, "DELETE", "/v1/sessions/"+s.ID, u.Anchor.Token, xff, nil)
	}
	if op.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	s.Revoke = op
	w.model.mu.Unlock()
	if op.Outcome == OK {
		w.prober.Ended(op, s.Token)
	} else {
		w.prober.Forget(s.Token)
	}
}

// throwaway registers an account, logs in, writes a key and deletes the account, each step
// at a target of its own; it stops at the first step that is not acknowledged.
func (w *Workload) throwaway(ctx context.Context, rng *rand.Rand, worker int, xff string) {
	u := &User{Name: fmt.Sprintf("tmp%s%d", w.run, w.next()), Password: "throwaway-pass-" + strconv.Itoa(rng.IntN(1e6)),
		Ephemeral: true, Worker: worker, Profile: map[string][]*Op{}}
	u.Initial = map[string]string{"first_name": "Tmp", "last_name": "User", "email": u.Name + "@example.com", "address": "nowhere"}
	op := &Op{Kind: OpRegister, User: u.Name}
	w.do(ctx, op, w.pickTarget(rng), "POST", "/v1/users", "", xff, map[string]any{
		"username": u.Name, "password": u.Password, "profile": u.Initial,
	})
	u.Register = op
	w.model.mu.Lock()
	w.model.Users = append(w.model.Users, u)
	w.model.mu.Unlock()
	if op.Outcome != OK {
		return
	}
	s, _ := w.login(ctx, u, w.pickTarget(rng), xff)
	if s == nil {
		return
	}
	u.Anchor = s
	w.setKey(ctx, rng, u, w.pickTarget(rng), xff, map[*KeyState]*probe{})
	erase := &Op{Kind: OpErase, User: u.Name, Session: s.ID}
	w.do(ctx, erase, w.pickTarget(rng), "DELETE", "/v1/users/me", s.Token, xff, nil)
	if erase.Outcome == Fail {
		return
	}
	w.model.mu.Lock()
	u.Erase = erase
	w.model.mu.Unlock()
	if erase.Outcome == OK {
		w.prober.Ended(erase, s.Token)
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
