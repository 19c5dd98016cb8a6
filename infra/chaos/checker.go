package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Verdict is the final check, in the spirit of Jepsen's set-full: after the last heal,
// every acknowledged write must be visible through every node, nothing deleted or revoked
// may be back, and every node must answer the same (with placement: every holder holds the
// same; see "The final read and placement" below).
type Verdict struct {
	Acked       int `json:"acked"`       // acknowledged operations that write (reads aside)
	Checked     int `json:"checked"`     // acknowledged writes whose effect was read on every node
	Lost        int `json:"lost"`        // acknowledged writes missing on some node
	Resurrected int `json:"resurrected"` // deleted keys, ended sessions, erased accounts seen again
	Duplicated  int `json:"duplicated"`  // messages seen more than once
	Divergent   int `json:"divergent"`   // objects that differ between nodes
	Reordered   int `json:"reordered"`   // a sender's messages out of the order sent
	Phantom     int `json:"phantom"`     // messages nobody sent
	CursorSkips int `json:"cursor_skips"`
	// Unanswered: final reads that got neither the answer due nor one that contradicts it
	// (a 5xx, a 429, no answer) even after retries: every node must answer.
	Unanswered int `json:"unanswered"`
	// Consistency: what the clients saw, with their bookmarks, during the run (not read
	// again after it): spurious 401s and read-your-writes violations fail the run.
	Consistency ConsistencyCount `json:"consistency"`
	Violations  []string         `json:"violations"`
	Pass        int              `json:"pass"` // which read pass this is (a second one follows a failed first)
	// ServedBy counts the final reads by the node that answered them (X-Served-By), and
	// Forwarded those a node relayed to a holder: whose state the checker compared.
	ServedBy  map[string]int `json:"served_by,omitempty"`
	Reads     int            `json:"reads"`
	Forwarded int            `json:"forwarded"`
}

func (v *Verdict) violate(format string, args ...any) {
	if len(v.Violations) < 200 {
		v.Violations = append(v.Violations, fmt.Sprintf(format, args...))
	}
}

// Failed counts the violations of every kind.
func (v *Verdict) Failed() int {
	return v.Lost + v.Resurrected + v.Duplicated + v.Divergent + v.Reordered + v.Phantom + v.CursorSkips + v.Unanswered + v.Consistency.Failed()
}

// The final read and placement. With --replicas a node stores only the partitions it
// holds (and keys on their way to their holders), so two nodes' whole stores differ by
// design and comparing them (or their digests) would say nothing. What every node must
// agree on is its answers: the checker reads each object it knows — a session, a profile,
// an erased account's login, a conversation through each of its two participants (it
// lives in both their partitions) — through the API of every node, and requires the
// same answer everywhere. This compares every holder's own state: a node that holds the
// partition a request is about always serves it from its own store (edge/forward.go,
// route), and every node is asked directly. A node that does not hold it relays a holder's
// answer (X-Sessiond-Forwarded-By, its region's holders first), so its answer adds no
// state of its own but must agree too; after the final heal every holder is reachable, so
// a non-holder serving from its own leftovers would show up as a difference. Reading
// the holders' digests instead would need the placement function and node ids on the
// suite's side and a per-key digest the API does not offer, and would prove less: it is
// the answers that clients get. Without --replicas every node holds everything and
// answers itself: the same check compares six full copies. Each read's serving node is
// counted (Verdict.ServedBy) so the report shows which nodes' state was compared.

type sessionRead struct {
	status int
	data   map[string]json.RawMessage
	err    error
	by     string // the node that served the read
	body   string // the answer, when it is neither 200 nor 401
}

// describe says what a read that was neither 200 nor 401 got, for violations.
func (sr sessionRead) describe(n *Node) string {
	if sr.err != nil {
		return fmt.Sprintf("no answer on %s (%v)", n.Name, sr.err)
	}
	return fmt.Sprintf("%d %s on %s%s", sr.status, sr.body, n.Name, servedBy(sr.by, n))
}

type nodeState struct {
	sessions  map[string]sessionRead         // token → read
	profiles  map[string]map[string]string   // user → profile
	profileBy map[string]string              // user → the node that served it
	convs     map[*Conversation][]apiMessage // full conversation, read by its Reader
	convsBy   map[*Conversation]string       // … served by
	others    map[*Conversation][]apiMessage // the same, read by its Other participant
	othersBy  map[*Conversation]string       // … served by
	logins    map[string]Result              // erased user → login
	served    map[string]int                 // serving node → reads it answered
	forwarded int                            // reads the node relayed to another
	errs      []string
}

// readAll reads, on one node, everything the model says should (or should not) be there.
func (r *Runner) readAll(ctx context.Context, n *Node, users []*User) *nodeState {
	st := &nodeState{sessions: map[string]sessionRead{}, profiles: map[string]map[string]string{}, profileBy: map[string]string{},
		convs: map[*Conversation][]apiMessage{}, convsBy: map[*Conversation]string{},
		others: map[*Conversation][]apiMessage{}, othersBy: map[*Conversation]string{},
		logins: map[string]Result{}, served: map[string]int{}}
	count := func(res Result) {
		if res.Status == 0 {
			return
		}
		st.served[res.ServedBy]++
		if res.ForwardedBy != "" {
			st.forwarded++
		}
	}
	get := func(path, token string) Result {
		for attempt := 0; ; attempt++ {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res := r.client.Do(rctx, n.URL(), "GET", path, token, "", nil)
			cancel()
			if res.Err == nil && res.Status < 500 || attempt == 3 {
				count(res)
				return res
			}
			sleep(ctx, 500*time.Millisecond)
		}
	}
	for _, u := range users {
		if u.Register == nil || u.Register.Outcome != OK {
			continue
		}
		for _, s := range u.Sessions {
			res := get("/v1/sessions/current", s.Token)
			sr := sessionRead{status: res.Status, err: res.Err, by: res.ServedBy}
			if res.Status != 200 && res.Status != 401 {
				sr.body = truncate(strings.TrimSpace(string(res.Body)), 160)
			}
			if res.Status == 200 {
				var body struct {
					Session apiSession `json:"session"`
				}
				if err := res.Decode(&body); err != nil {
					sr.err = err
				}
				sr.data = body.Session.Data
			}
			st.sessions[s.Token] = sr
		}
		if u.Anchor != nil && u.Anchor.live() {
			res := get("/v1/users/me", u.Anchor.Token)
			if res.Status == 200 {
				var body struct {
					User apiUser `json:"user"`
				}
				if res.Decode(&body) == nil {
					st.profiles[u.Name] = body.User.Profile
					st.profileBy[u.Name] = res.ServedBy
				}
			} else {
				st.errs = append(st.errs, fmt.Sprintf("profile of %s: %v", u.Name, errStatus(res)))
			}
		}
		if u.Erase != nil && u.Erase.Outcome == OK {
			// Each attempt from an address of its own: the checker's logins of every erased
			// account on every node would otherwise trip the per-address failure limit
			// (429), which proves nothing either way.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			res := r.client.Do(rctx, n.URL(), "POST", "/v1/sessions", "", r.checkerAddr(), map[string]string{"username": u.Name, "password": u.Password})
			cancel()
			count(res)
			st.logins[u.Name] = res
		}
	}
	// readConv reads a whole conversation as one of its participants.
	readConv := func(me, other *User) ([]apiMessage, string) {
		var all []apiMessage
		after, by := "", ""
		for range 100 {
			q := url.Values{"with": {other.Name}, "limit": {"500"}}
			if after != "" {
				q.Set("after", after)
			}
			res := get("/v1/messages?"+q.Encode(), me.Anchor.Token)
			var page struct {
				Messages []apiMessage `json:"messages"`
				Next     string       `json:"next"`
			}
			if res.Status != 200 || res.Decode(&page) != nil {
				st.errs = append(st.errs, fmt.Sprintf("messages %s/%s: %v", me.Name, other.Name, errStatus(res)))
				return nil, res.ServedBy
			}
			by = res.ServedBy
			all = append(all, page.Messages...)
			if len(page.Messages) < 500 || page.Next == "" {
				break
			}
			after = page.Next
		}
		return all, by
	}
	for _, conv := range r.workload.convs {
		st.convs[conv], st.convsBy[conv] = readConv(conv.Reader, conv.Other)
		st.others[conv], st.othersBy[conv] = readConv(conv.Other, conv.Reader)
		// Bring the prober's cursor read up to date, for the cursor check.
		_, _ = conv.readNew(ctx, r.client, n)
	}
	return st
}

// Check reads every node and judges the run.
func (r *Runner) Check(ctx context.Context, pass int) *Verdict {
	v := &Verdict{Pass: pass}
	r.model.mu.Lock()
	users := append([]*User(nil), r.model.Users...)
	r.model.mu.Unlock()
	for _, op := range r.history.Ops() {
		if op.Outcome == OK && !op.Kind.isRead() {
			v.Acked++
		}
	}
	states := make([]*nodeState, len(r.d.Nodes))
	var wg sync.WaitGroup
	for i, n := range r.d.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			states[i] = r.readAll(ctx, n, users)
		}()
	}
	wg.Wait()
	v.ServedBy = map[string]int{}
	for i, st := range states {
		for _, e := range st.errs {
			v.violate("%s: read failed: %s", r.d.Nodes[i].Name, e)
		}
		for by, k := range st.served {
			v.ServedBy[by] += k
			v.Reads += k
		}
		v.Forwarded += st.forwarded
	}
	for _, u := range users {
		if u.Register == nil || u.Register.Outcome != OK {
			continue
		}
		r.checkUser(v, u, states)
	}
	for _, conv := range r.workload.convs {
		r.checkConversation(v, conv, states)
	}
	return v
}

func (r *Runner) checkUser(v *Verdict, u *User, states []*nodeState) {
	erased := u.Erase != nil && u.Erase.Outcome == OK
	if erased {
		for i, st := range states {
			switch res := st.logins[u.Name]; res.Status {
			case 201:
				v.Resurrected++
				v.violate("resurrected: erased account %s (op %d) logs in on %s%s", u.Name, u.Erase.ID, r.d.Nodes[i].Name, servedBy(res.ServedBy, r.d.Nodes[i]))
			case 401:
			default:
				v.Unanswered++
				v.violate("unanswered: a login of erased account %s (op %d) on %s%s got %s", u.Name, u.Erase.ID, r.d.Nodes[i].Name,
					servedBy(res.ServedBy, r.d.Nodes[i]), res.Describe())
			}
		}
	}
	for _, s := range u.Sessions {
		if s.Login == nil || s.Login.Outcome != OK {
			continue
		}
		switch {
		case s.ended():
			v.Checked++
			for i, st := range states {
				switch sr := st.sessions[s.Token]; sr.status {
				case 401:
					continue
				case 200:
					v.Resurrected++
					v.violate("resurrected: session %s of %s (ended by op %d) answers 200 on %s%s", s.ID, u.Name, endOp(s).ID, r.d.Nodes[i].Name, servedBy(sr.by, r.d.Nodes[i]))
				default:
					v.Unanswered++
					v.violate("unanswered: session %s of %s (ended by op %d, served by %s): %s", s.ID, u.Name, endOp(s).ID, endOp(s).ServedBy, sr.describe(r.d.Nodes[i]))
				}
				break
			}
		case s.live():
			r.checkSession(v, s, states)
		}
	}
	if u.Anchor != nil && u.Anchor.live() {
		r.checkProfile(v, u, states)
	}
}

func endOp(s *Session) *Op {
	if s.Revoke != nil {
		return s.Revoke
	}
	return s.User.Erase
}

func (r *Runner) checkSession(v *Verdict, s *Session, states []*nodeState) {
	v.Checked++
	var first string
	for i, st := range states {
		sr := st.sessions[s.Token]
		switch sr.status {
		case 200:
		case 401, 404:
			v.Lost++
			v.violate("lost: session %s of %s (login op %d, served by %s) answers %d on %s%s", s.ID, s.User.Name, s.Login.ID, s.Login.ServedBy, sr.status,
				r.d.Nodes[i].Name, servedBy(sr.by, r.d.Nodes[i]))
			return
		default:
			v.Unanswered++
			v.violate("unanswered: session %s of %s (login op %d, served by %s): %s", s.ID, s.User.Name, s.Login.ID, s.Login.ServedBy, sr.describe(r.d.Nodes[i]))
			return
		}
		enc := canonical(sr.data)
		if i == 0 {
			first = enc
		} else if enc != first {
			v.Divergent++
			v.violate("divergent: session %s data differs between %s and %s", s.ID, r.d.Nodes[0].Name+servedBy(states[0].sessions[s.Token].by, r.d.Nodes[0]),
				r.d.Nodes[i].Name+servedBy(sr.by, r.d.Nodes[i]))
		}
	}
	keys := make([]string, 0, len(s.Keys))
	for k := range s.Keys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		ks := s.Keys[k]
		switch {
		case ks.Set.Outcome == OK && ks.Del == nil:
			v.Checked++
			for i, st := range states {
				raw, ok := st.sessions[s.Token].data[k]
				if !ok || !jsonEqual(raw, ks.Set.Value) {
					v.Lost++
					v.violate("lost: op %d set %s.%s=%s (acked by %s at %s), %s has %s", ks.Set.ID, s.ID, k, ks.Set.Value,
						ks.Set.ServedBy, ks.Set.Ack.Format("15:04:05.000"), r.d.Nodes[i].Name, string(raw))
					break
				}
			}
		case ks.Del != nil && ks.Del.Outcome == OK && !ks.Uncertain:
			v.Checked++
			for i, st := range states {
				if raw, ok := st.sessions[s.Token].data[k]; ok {
					v.Resurrected++
					v.violate("resurrected: op %d deleted %s.%s (acked by %s at %s), %s has %s", ks.Del.ID, s.ID, k,
						ks.Del.ServedBy, ks.Del.Ack.Format("15:04:05.000"), r.d.Nodes[i].Name, string(raw))
					break
				}
			}
		}
	}
}

func (r *Runner) checkProfile(v *Verdict, u *User, states []*nodeState) {
	for i := 1; i < len(states); i++ {
		if canonical(states[i].profiles[u.Name]) != canonical(states[0].profiles[u.Name]) {
			v.Divergent++
			v.violate("divergent: profile of %s differs between %s and %s", u.Name, r.d.Nodes[0].Name+servedBy(states[0].profileBy[u.Name], r.d.Nodes[0]),
				r.d.Nodes[i].Name+servedBy(states[i].profileBy[u.Name], r.d.Nodes[i]))
			break
		}
	}
	for _, field := range profileFields {
		writes := u.Profile[field]
		if len(writes) == 0 {
			continue
		}
		// The last acknowledged write wins, or any write that may have landed after it:
		// one with an unknown outcome, or one from a node whose clock ran ahead.
		allowed := map[string]bool{}
		var last *Op
		for _, w := range writes {
			if w.Outcome == OK && !w.Skewed {
				last = w
			}
			if w.Outcome == Info || w.Skewed {
				allowed[w.Value] = true
			}
		}
		if last == nil {
			allowed[u.Initial[field]] = true
		} else {
			allowed[last.Value] = true
			v.Checked++
			// While clocks ran ahead, writes of that time may order in any way among
			// themselves (not after it: later writes carry later timestamps).
			if last.ClockAhead {
				for _, w := range writes {
					if w.ClockAhead {
						allowed[w.Value] = true
					}
				}
			}
		}
		for i, st := range states {
			got := st.profiles[u.Name][field]
			if !allowed[got] {
				v.Lost++
				want := "?"
				if last != nil {
					want = fmt.Sprintf("%q (op %d, acked by %s at %s)", last.Value, last.ID, last.ServedBy, last.Ack.Format("15:04:05.000"))
				}
				v.violate("lost: profile %s.%s on %s is %q, want %s", u.Name, field, r.d.Nodes[i].Name, got, want)
				break
			}
		}
	}
}

func (r *Runner) checkConversation(v *Verdict, conv *Conversation, states []*nodeState) {
	a, b := conv.Reader, conv.Other
	sends := append(append([]*Op(nil), a.Sent...), b.Sent...)
	byID := map[string]*Op{}
	byBody := map[string]*Op{}
	for _, op := range sends {
		if op.MsgID != "" {
			byID[op.MsgID] = op
		}
		byBody[op.Value] = op
	}
	var firstIDs []string
	for i, st := range states {
		n := r.d.Nodes[i].Name
		msgs := st.convs[conv]
		count := map[string]int{}
		bodies := map[string]int{}
		pos := map[string]int{}
		var ids []string
		for j, m := range msgs {
			count[m.ID]++
			bodies[m.Body]++
			pos[m.ID] = j
			ids = append(ids, m.ID)
			if _, ok := byBody[m.Body]; !ok {
				v.Phantom++
				v.violate("phantom: message %s %q on %s was never sent", m.ID, m.Body, n)
			}
		}
		if i == 0 {
			firstIDs = ids
		} else if !slices.Equal(ids, firstIDs) {
			v.Divergent++
			v.violate("divergent: conversation %s/%s differs between %s (%d messages) and %s (%d)", a.Name, b.Name,
				r.d.Nodes[0].Name+servedBy(states[0].convsBy[conv], r.d.Nodes[0]), len(firstIDs), n+servedBy(st.convsBy[conv], r.d.Nodes[i]), len(ids))
		}
		// The conversation lives in both participants' partitions: read through the other
		// participant, it must be the same, message for message.
		var otherIDs []string
		for _, m := range st.others[conv] {
			otherIDs = append(otherIDs, m.ID)
		}
		if !slices.Equal(otherIDs, firstIDs) {
			v.Divergent++
			v.violate("divergent: conversation %s/%s read by %s on %s (%d messages) differs from %s's on %s (%d)", a.Name, b.Name,
				b.Name, n+servedBy(st.othersBy[conv], r.d.Nodes[i]), len(otherIDs), a.Name, r.d.Nodes[0].Name+servedBy(states[0].convsBy[conv], r.d.Nodes[0]), len(firstIDs))
		}
		for _, op := range sends {
			if op.Outcome != OK {
				if bodies[op.Value] > 1 {
					v.Duplicated++
					v.violate("duplicated: message %q (op %d, unacknowledged) appears %d times on %s", op.Value, op.ID, bodies[op.Value], n)
				}
				continue
			}
			if i == 0 {
				v.Checked++
			}
			switch {
			case count[op.MsgID] == 0:
				v.Lost++
				v.violate("lost: message %s %q (op %d, acked by %s at %s) missing on %s", op.MsgID, op.Value, op.ID, op.ServedBy, op.Ack.Format("15:04:05.000"), n)
			case count[op.MsgID] > 1 || bodies[op.Value] > 1:
				v.Duplicated++
				v.violate("duplicated: message %s %q (op %d) appears %d times on %s", op.MsgID, op.Value, op.ID, max(count[op.MsgID], bodies[op.Value]), n)
			}
		}
		// A sender's messages stay in the order sent (those of a skewed node aside: their
		// timestamps are ahead of real time by design of the fault).
		for _, u := range []*User{a, b} {
			prev := -1
			var prevOp *Op
			for _, op := range u.Sent {
				if op.Outcome != OK || op.Skewed {
					continue
				}
				p, ok := pos[op.MsgID]
				if !ok {
					continue
				}
				if p < prev {
					v.Reordered++
					v.violate("reordered: on %s, %s's message op %d (sent %s) comes before op %d (sent %s)", n, u.Name, op.ID,
						op.Invoke.Format("15:04:05.000"), prevOp.ID, prevOp.Invoke.Format("15:04:05.000"))
					break
				}
				prev, prevOp = p, op
			}
		}
		// The cursor reads of the whole run saw every message the full read sees.
		conv.mu.Lock()
		seen := conv.ids[n]
		var skipped []string
		for _, id := range ids {
			if !seen[id] {
				skipped = append(skipped, id)
			}
		}
		conv.mu.Unlock()
		if len(skipped) > 0 {
			v.CursorSkips++
			v.violate("cursor skipped: on %s, reading %s/%s with a cursor never returned %d messages the full read has (e.g. %s)", n, a.Name, b.Name, len(skipped), skipped[0])
		}
	}
}

// checkerAddr returns a client address of its own for one request of the checker
// (X-Forwarded-For, which the nodes take from the host's end of the front network).
func (r *Runner) checkerAddr() string {
	i := r.checkerSeq.Add(1)
	return fmt.Sprintf("100.64.%d.%d", (i/250)%250, 1+i%250)
}

// servedBy says which node answered a read sent to n, when another one did.
func servedBy(by string, n *Node) string {
	if by == "" || by == n.Name {
		return ""
	}
	return " (served by " + by + ")"
}

// canonical encodes a value with sorted keys, for comparison.
func canonical(v any) string {
	b, _ := json.Marshal(v)
	var x any
	_ = json.Unmarshal(b, &x)
	b, _ = json.Marshal(x) // maps marshal with sorted keys
	return string(b)
}

// Latency is a distribution of durations.
type Latency struct {
	N   int           `json:"n"`
	P50 time.Duration `json:"p50_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func latencyOf(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	return Latency{N: len(ds), P50: q(0.50), P99: q(0.99), Max: ds[len(ds)-1]}
}

func (l Latency) String() string {
	if l.N == 0 {
		return "n=0"
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", fmtDur(l.P50), fmtDur(l.P99), fmtDur(l.Max), l.N)
}

func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

func joinNonEmpty(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "; ")
}
