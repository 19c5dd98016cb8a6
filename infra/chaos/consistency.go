package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Session guarantees as a client sees them (docs/API.md, "Consistency"). Every simulated
// user keeps the latest X-Sessiond-Bookmark it was given and sends it back (Workload.do),
// so whichever node answers must show the user's own acknowledged writes, or answer
// 503 behind. The workload reads its writes back through any target and checks them here:
//
//   - session data: every acknowledged key with its value, no acknowledged delete undone
//     (in reads of the session and in the session a PATCH returns);
//   - profile: each field shows the last acknowledged write, or one with an unknown outcome
//     (a request a paused node held may still land later, with a later timestamp);
//   - messages: every acknowledged message of the user is in the conversation;
//   - a sign-out, revocation or erasure: the ended session's token, sent with the bookmark
//     of its end, is refused (401) wherever it lands;
//   - a token is never refused while its session is live (a spurious 401), with or without
//     the client's bookmark: the token carries the bookmark of its session's creation.
//
// The writes of a node whose clock ran ahead need no allowance here: a bookmark orders a
// client's writes causally (a node meets it, and so moves its clock past them, before it
// writes), and a node that cannot meet it answers behind. Only a 401 for a token that such
// a node issued while its clock ran ahead is counted apart (TokenAhead401): its issue time
// lies in the others' future, and JWT validation refuses it until real time catches up.

// ConsistencyCount counts what the workload saw of the session guarantees.
type ConsistencyCount struct {
	Checked       int `json:"checked"`         // responses checked against the client's acknowledged writes
	Fresh         int `json:"fresh"`           // new tokens used at once without the client's bookmark
	Spurious401   int `json:"spurious_401"`    // live session (or acknowledged account) refused: must be 0
	RYW           int `json:"ryw_violations"`  // a response with the bookmark that missed the client's writes: must be 0
	Behind        int `json:"behind"`          // 503 behind: allowed
	TokenAhead401 int `json:"token_ahead_401"` // 401 for a token from a node with its clock ahead
}

func (c *ConsistencyCount) add(op *Op) {
	if op.RYWChecked {
		c.Checked++
	}
	if op.Kind == OpReadFresh && (op.Status == 200 || op.Spurious401) {
		c.Fresh++
	}
	if op.Spurious401 {
		c.Spurious401++
	}
	if op.RYW != "" {
		c.RYW++
	}
	if op.Behind {
		c.Behind++
	}
	if op.TokenAhead401 {
		c.TokenAhead401++
	}
}

// Failed counts the violations among them.
func (c ConsistencyCount) Failed() int { return c.Spurious401 + c.RYW }

// consistencyOf counts the history by scenario (a scenario's recovery is part of it;
// setup, steady and final together are "no fault") and in total, and describes each
// violation.
func consistencyOf(ops []*Op) (total ConsistencyCount, by map[string]*ConsistencyCount, violations []string) {
	by = map[string]*ConsistencyCount{}
	for _, op := range ops {
		name := strings.TrimPrefix(op.Scenario, "recovery:")
		switch name {
		case "setup", "steady", "final":
			name = noFault
		}
		if by[name] == nil {
			by[name] = &ConsistencyCount{}
		}
		by[name].add(op)
		total.add(op)
		if op.Spurious401 {
			violations = append(violations, fmt.Sprintf("spurious 401: op %d %s by %s (session %s) through %s, served by %s at %s: %s",
				op.ID, op.Kind, op.User, op.Session, op.Target, op.ServedBy, op.Invoke.Format("15:04:05.000"), op.Err))
		}
		if op.RYW != "" {
			violations = append(violations, fmt.Sprintf("read-your-writes: op %d %s by %s through %s, served by %s at %s with the client's bookmark: %s",
				op.ID, op.Kind, op.User, op.Target, op.ServedBy, op.Invoke.Format("15:04:05.000"), op.RYW))
		}
	}
	return total, by, violations
}

// noFault names the time outside every scenario in per-scenario counts.
const noFault = "no fault (setup, steady, final)"

// readSession reads a session with the user's bookmark and checks its data.
func (w *Workload) readSession(ctx context.Context, s *Session, t Target, xff string) {
	op := &Op{Kind: OpRead, User: s.User.Name, Session: s.ID}
	r := w.do(ctx, op, call{user: s.User, session: s, target: t, method: "GET", path: "/v1/sessions/current", xff: xff})
	if data, ok := sessionData(r); ok {
		w.checkSessionData(op, s, data)
	}
}

// checkSessionData checks what a response carrying the user's bookmark showed of the
// session against the user's acknowledged writes to it.
func (w *Workload) checkSessionData(op *Op, s *Session, data map[string]json.RawMessage) {
	w.model.mu.Lock()
	defer w.model.mu.Unlock()
	op.RYWChecked = true
	var problems []string
	for _, k := range slices.Sorted(maps.Keys(s.Keys)) {
		ks := s.Keys[k]
		raw, has := data[k]
		switch {
		case ks.Set.Outcome == OK && ks.Del == nil:
			if !has || !jsonEqual(raw, ks.Set.Value) {
				problems = append(problems, fmt.Sprintf("%s is %s, want %s (set by op %d, served by %s)", k, orAbsent(raw, has), ks.Set.Value, ks.Set.ID, ks.Set.ServedBy))
			}
		case ks.Set.Outcome == OK && ks.Del != nil && ks.Del.Outcome == OK:
			if has {
				problems = append(problems, fmt.Sprintf("%s is %s, deleted by op %d (served by %s)", k, raw, ks.Del.ID, ks.Del.ServedBy))
			}
		}
	}
	if len(problems) > 0 {
		op.RYW = fmt.Sprintf("session %s: %s", s.ID, strings.Join(problems, "; "))
	}
}

func orAbsent(raw json.RawMessage, has bool) string {
	if !has {
		return "absent"
	}
	return string(raw)
}

// readProfile reads the user's profile with its bookmark and checks it.
func (w *Workload) readProfile(ctx context.Context, u *User, t Target, xff string) {
	op := &Op{Kind: OpReadProfile, User: u.Name, Session: u.Anchor.ID}
	r := w.do(ctx, op, call{user: u, session: u.Anchor, target: t, method: "GET", path: "/v1/users/me", xff: xff})
	if profile, ok := profileOf(r); ok {
		w.checkProfile(op, u, profile)
	}
}

// profileOf decodes the user a response carries, if it is a 200 with one.
func profileOf(r Result) (map[string]string, bool) {
	if r.Status != 200 {
		return nil, false
	}
	var body struct {
		User apiUser `json:"user"`
	}
	if r.Decode(&body) != nil {
		return nil, false
	}
	return body.User.Profile, true
}

// checkProfile checks a profile shown with the user's bookmark: each field holds its last
// acknowledged value (the registration's, if none), or that of a write whose outcome is
// unknown.
func (w *Workload) checkProfile(op *Op, u *User, profile map[string]string) {
	w.model.mu.Lock()
	defer w.model.mu.Unlock()
	op.RYWChecked = true
	var problems []string
	for _, field := range profileFields {
		want, from := u.Initial[field], "registration"
		allowed := map[string]bool{}
		for _, wr := range u.Profile[field] {
			switch wr.Outcome {
			case OK:
				want, from = wr.Value, fmt.Sprintf("op %d, served by %s", wr.ID, wr.ServedBy)
			case Info:
				allowed[wr.Value] = true
			}
		}
		allowed[want] = true
		if got := profile[field]; !allowed[got] {
			problems = append(problems, fmt.Sprintf("%s is %q, want %q (%s)", field, got, want, from))
		}
	}
	if len(problems) > 0 {
		op.RYW = "profile: " + strings.Join(problems, "; ")
	}
}

// readMessages reads the user's whole conversation with its partner, page by page, with
// its bookmark, and checks that every message it sent and had acknowledged is there.
func (w *Workload) readMessages(ctx context.Context, u *User, t Target, xff string) {
	if u.Partner == nil {
		return
	}
	w.model.mu.Lock()
	want := map[string]*Op{}
	for _, s := range u.Sent {
		if s.Outcome == OK && s.MsgID != "" {
			want[s.MsgID] = s
		}
	}
	w.model.mu.Unlock()
	op := &Op{Kind: OpReadMessages, User: u.Name, Session: u.Anchor.ID, Peer: u.Partner.Name}
	seen := map[string]bool{}
	after := ""
	for page := 0; ; page++ {
		q := url.Values{"with": {u.Partner.Name}, "limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		pageOp := op
		if page > 0 { // each further page is an operation of its own
			pageOp = &Op{Kind: OpReadMessages, User: u.Name, Session: u.Anchor.ID, Peer: u.Partner.Name}
		}
		r := w.do(ctx, pageOp, call{user: u, session: u.Anchor, target: t, method: "GET", path: "/v1/messages?" + q.Encode(), xff: xff})
		var body struct {
			Messages []apiMessage `json:"messages"`
			Next     string       `json:"next"`
		}
		if r.Status != 200 || r.Decode(&body) != nil {
			return // not a complete read: nothing to check
		}
		for _, m := range body.Messages {
			seen[m.ID] = true
		}
		if len(body.Messages) < 500 || body.Next == "" || page == 50 {
			break
		}
		after = body.Next
	}
	op.RYWChecked = true
	var missing []string
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if !seen[id] {
			s := want[id]
			missing = append(missing, fmt.Sprintf("%s (op %d, served by %s at %s)", id, s.ID, s.ServedBy, s.Ack.Format("15:04:05.000")))
		}
	}
	if len(missing) > 0 {
		op.RYW = fmt.Sprintf("conversation with %s: %d of %d own acknowledged messages missing: %s", u.Partner.Name, len(missing), len(want),
			strings.Join(missing[:min(len(missing), 3)], ", "))
	}
}

// readEnded uses the token of a session whose end (logout, revocation, erasure) was
// acknowledged, with the bookmark of that end: it must be refused.
func (w *Workload) readEnded(ctx context.Context, u *User, s *Session, end *Op, t Target, xff string) {
	op := &Op{Kind: OpReadEnded, User: u.Name, Session: s.ID}
	w.do(ctx, op, call{user: u, session: s, target: t, method: "GET", path: "/v1/sessions/current", xff: xff})
	switch {
	case op.Status == 401:
		op.RYWChecked = true
	case op.Status == 200:
		op.RYWChecked = true
		op.RYW = fmt.Sprintf("session %s ended by op %d (%s, served by %s) still accepted", s.ID, end.ID, end.Kind, end.ServedBy)
	}
}

// readFresh uses a new session's token at once, without the client's bookmark: the
// bookmark in the token must get it accepted on any node (never a 401).
func (w *Workload) readFresh(ctx context.Context, s *Session, t Target, xff string) {
	op := &Op{Kind: OpReadFresh, User: s.User.Name, Session: s.ID}
	w.do(ctx, op, call{user: s.User, session: s, target: t, method: "GET", path: "/v1/sessions/current", xff: xff, noBookmark: true})
}

// offsetWindow is when a node ran with its clock offset: the tokens it issued then carry
// an issue time offset ahead of real time.
type offsetWindow struct {
	node     string
	from, to time.Time
	offset   time.Duration
}

// tokenAhead reports whether a 401 at time at, for the session that login opened, is
// explained by a clock ahead: the login was served by a node running with its clock
// offset, and real time had not yet reached the token's issue time.
func (s *nemesisState) tokenAhead(login *Op, at time.Time) bool {
	if login == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.offsets {
		if login.ServedBy == w.node && !login.Invoke.Before(w.from) && !login.Invoke.After(w.to) && at.Before(login.Ack.Add(w.offset)) {
			return true
		}
	}
	return false
}

func (s *nemesisState) addOffset(w offsetWindow) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offsets = append(s.offsets, w)
	return len(s.offsets) - 1
}

func (s *nemesisState) endOffset(i int, to time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.offsets[i].to = to
}
