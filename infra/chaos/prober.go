package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// probeKind says what "visible on a node" means for an acknowledged write.
type probeKind int

const (
	probeSessionLive probeKind = iota // GET /v1/sessions/current answers 200
	probeKeySet                       // … and data[key] == value
	probeKeyDel                       // … and data has no key
	probeProfile                      // GET /v1/users/me shows profile[field] == value
	probeMessage                      // the conversation, read with a cursor, holds the message id
	probeEnded                        // GET /v1/sessions/current answers 401
)

// probe follows one acknowledged write until every node shows it.
type probe struct {
	op    *Op
	kind  probeKind
	token string
	key   string // data key or profile field
	value string // data value as JSON, or profile value
	conv  *Conversation
	msgID string

	seen    map[string]time.Time // node → first time it showed the write
	done    bool                 // seen on every node
	dropped bool                 // superseded by a later write: no longer measured
	// via: node → the node that served the read that showed it (X-Served-By): with
	// --replicas a node relays a read of data it does not hold from a holder, so what
	// it shows is the holder's state ("" where unknown: conversation reads).
	via map[string]string
}

// Conversation is a pair of users who message each other; Reader reads it.
type Conversation struct {
	Reader, Other *User
	mu            sync.Mutex
	cursor        map[string]string          // node → next cursor
	ids           map[string]map[string]bool // node → message ids returned by cursor reads
	order         map[string][]string        // node → ids in the order cursor reads returned them
}

func newConversation(a, b *User) *Conversation {
	return &Conversation{Reader: a, Other: b, cursor: map[string]string{},
		ids: map[string]map[string]bool{}, order: map[string][]string{}}
}

// Prober measures, for every acknowledged write, the time until every node shows it, by
// reading each node directly. It reads only what is still pending, as fast as the nodes
// answer (a round every 50ms at most), so the figures have that resolution.
type Prober struct {
	client *Client
	clock  func() time.Time

	mu      sync.Mutex
	nodes   []*Node // the nodes a write must be visible through (the joiner while it is in)
	pending []*probe
	all     []*probe
	down    map[string]bool // nodes not read (killed, paused): they cannot answer

	bySession map[string][]*probe // token → probes reading through it
	byField   map[string]*probe   // user/field → latest profile probe
}

func newProber(c *Client, nodes []*Node) *Prober {
	return &Prober{client: c, nodes: nodes, clock: time.Now, down: map[string]bool{},
		bySession: map[string][]*probe{}, byField: map[string]*probe{}}
}

// SetDown excludes a node from reads (or includes it again).
func (p *Prober) SetDown(node string, down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down[node] = down
}

// AddNode makes a write visible only once n shows it too: the writes still pending when
// n joins, and every later one, are read through n.
func (p *Prober) AddNode(n *Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes = append(p.nodes, n)
}

// RemoveNode stops reading through the node of that name: a pending write is then
// visible once every other node shows it.
func (p *Prober) RemoveNode(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes = slices.DeleteFunc(p.nodes, func(n *Node) bool { return n.Name == name })
	for _, pr := range p.all {
		if !pr.done && !pr.dropped && len(pr.seen) > 0 {
			p.settle(pr)
		}
	}
}

// IsDown reports whether a node is excluded from reads.
func (p *Prober) IsDown(node string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.down[node]
}

func (p *Prober) add(pr *probe) *probe {
	pr.seen, pr.via = map[string]time.Time{}, map[string]string{}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pending = append(p.pending, pr)
	p.all = append(p.all, pr)
	if pr.token != "" && pr.kind != probeProfile {
		p.bySession[pr.token] = append(p.bySession[pr.token], pr)
	}
	return pr
}

// SessionLive follows a login.
func (p *Prober) SessionLive(op *Op, token string) {
	p.add(&probe{op: op, kind: probeSessionLive, token: token})
}

// KeySet follows a data write.
func (p *Prober) KeySet(op *Op, token, key, jsonValue string) *probe {
	return p.add(&probe{op: op, kind: probeKeySet, token: token, key: key, value: jsonValue})
}

// KeyDel follows a data delete; the set it undoes is no longer measured.
func (p *Prober) KeyDel(op *Op, token, key string, set *probe) {
	p.mu.Lock()
	if set != nil && !set.done {
		set.dropped = true
	}
	p.mu.Unlock()
	p.add(&probe{op: op, kind: probeKeyDel, token: token, key: key})
}

// Profile follows a profile write; an earlier one of the same field is no longer measured.
// With unsure set, the write is recorded but not measured: an earlier write of the field
// may still land after it and win (an unknown outcome, or a timestamp from a clock ahead).
func (p *Prober) Profile(op *Op, anchorToken, user, field, value string, unsure bool) {
	p.mu.Lock()
	if old := p.byField[user+"/"+field]; old != nil && !old.done {
		old.dropped = true
	}
	p.mu.Unlock()
	pr := p.add(&probe{op: op, kind: probeProfile, token: anchorToken, key: field, value: value, dropped: unsure})
	p.mu.Lock()
	p.byField[user+"/"+field] = pr
	p.mu.Unlock()
}

// Message follows a message.
func (p *Prober) Message(op *Op, conv *Conversation, id string) {
	p.add(&probe{op: op, kind: probeMessage, token: conv.Reader.Anchor.Token, conv: conv, msgID: id})
}

// Forget stops measuring the writes through a session: a logout, revocation or account
// deletion with an unknown outcome may have ended it.
func (p *Prober) Forget(token string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range p.bySession[token] {
		if !pr.done {
			pr.dropped = true
		}
	}
}

// ForgetField stops measuring the pending write of a profile field: a write with an
// unknown outcome may land after it.
func (p *Prober) ForgetField(user, field string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if old := p.byField[user+"/"+field]; old != nil && !old.done {
		old.dropped = true
	}
}

// ForgetProbe stops measuring one write.
func (p *Prober) ForgetProbe(pr *probe) {
	if pr == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !pr.done {
		pr.dropped = true
	}
}

// Ended follows a logout, revocation or account deletion: earlier writes through the
// session are no longer measured.
func (p *Prober) Ended(op *Op, token string) {
	p.mu.Lock()
	for _, pr := range p.bySession[token] {
		if !pr.done {
			pr.dropped = true
		}
	}
	p.mu.Unlock()
	p.add(&probe{op: op, kind: probeEnded, token: token})
}

// Run reads until ctx ends.
func (p *Prober) Run(ctx context.Context) {
	for ctx.Err() == nil {
		start := time.Now()
		p.round(ctx)
		if d := 50*time.Millisecond - time.Since(start); d > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
	}
}

// round reads, on each node that can answer, every object that a pending probe waits for.
func (p *Prober) round(ctx context.Context) {
	p.mu.Lock()
	var live []*probe
	for _, pr := range p.pending {
		if !pr.done && !pr.dropped {
			live = append(live, pr)
		}
	}
	p.pending = live
	down := make(map[string]bool, len(p.down))
	for k, v := range p.down {
		down[k] = v
	}
	type want struct {
		sessions map[string][]*probe // token → probes
		profiles map[string][]*probe // anchor token → probes
		convs    map[*Conversation][]*probe
	}
	wants := map[string]*want{}
	nodes := slices.Clone(p.nodes)
	for _, n := range nodes {
		if down[n.Name] {
			continue
		}
		w := &want{sessions: map[string][]*probe{}, profiles: map[string][]*probe{}, convs: map[*Conversation][]*probe{}}
		for _, pr := range live {
			if _, ok := pr.seen[n.Name]; ok {
				continue
			}
			switch pr.kind {
			case probeProfile:
				w.profiles[pr.token] = append(w.profiles[pr.token], pr)
			case probeMessage:
				w.convs[pr.conv] = append(w.convs[pr.conv], pr)
			default:
				w.sessions[pr.token] = append(w.sessions[pr.token], pr)
			}
		}
		wants[n.Name] = w
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	for _, n := range nodes {
		w := wants[n.Name]
		if w == nil {
			continue
		}
		// A node's reads run side by side: one that waits (a token whose session the node
		// does not hold yet makes it meet the token's bookmark, up to seconds when the node
		// is cut off) must not hold up the others, such as a partition marker's.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		sem := make(chan struct{}, readsPerNode)
		var nwg sync.WaitGroup
		read := func(f func()) {
			nwg.Add(1)
			go func() {
				defer nwg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				f()
			}()
		}
		for token, prs := range w.sessions {
			read(func() { p.readSession(rctx, n, token, prs) })
		}
		for token, prs := range w.profiles {
			read(func() { p.readProfile(rctx, n, token, prs) })
		}
		for conv, prs := range w.convs {
			read(func() { p.readConversation(rctx, n, conv, prs) })
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nwg.Wait()
			cancel()
		}()
	}
	wg.Wait()
}

// readsPerNode bounds the prober's concurrent reads of one node.
const readsPerNode = 8

func (p *Prober) get(ctx context.Context, n *Node, path, token string) Result {
	ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	return p.client.Do(ctx, n.URL(), "GET", path, token, "", nil)
}

func (p *Prober) mark(n *Node, servedBy string, prs []*probe, at time.Time, ok func(*probe) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pr := range prs {
		if _, seen := pr.seen[n.Name]; seen || !ok(pr) {
			continue
		}
		pr.seen[n.Name] = at
		pr.via[n.Name] = servedBy
		p.settle(pr)
	}
}

// settle marks a probe done once every node now read has shown its write, and measures
// the time until the last of them did. p.mu must be held.
func (p *Prober) settle(pr *probe) {
	var last time.Time
	lastNode := ""
	for _, n := range p.nodes {
		t, ok := pr.seen[n.Name]
		if !ok {
			return
		}
		if lastNode == "" || t.After(last) {
			last, lastNode = t, n.Name
		}
	}
	if lastNode == "" {
		return
	}
	pr.done = true
	pr.op.Visible = max(last.Sub(pr.op.Ack), time.Nanosecond)
	pr.op.LastNode = lastNode
}

func (p *Prober) readSession(ctx context.Context, n *Node, token string, prs []*probe) {
	r := p.get(ctx, n, "/v1/sessions/current", token)
	if r.Err != nil {
		return
	}
	if r.Status == 401 {
		p.mark(n, r.ServedBy, prs, r.End, func(pr *probe) bool { return pr.kind == probeEnded })
		return
	}
	if r.Status != 200 {
		return
	}
	var body struct {
		Session apiSession `json:"session"`
	}
	if r.Decode(&body) != nil {
		return
	}
	p.mark(n, r.ServedBy, prs, r.End, func(pr *probe) bool {
		switch pr.kind {
		case probeSessionLive:
			return true
		case probeKeySet:
			v, ok := body.Session.Data[pr.key]
			return ok && jsonEqual(v, pr.value)
		case probeKeyDel:
			_, ok := body.Session.Data[pr.key]
			return !ok
		}
		return false
	})
}

func (p *Prober) readProfile(ctx context.Context, n *Node, token string, prs []*probe) {
	r := p.get(ctx, n, "/v1/users/me", token)
	if r.Status != 200 {
		return
	}
	var body struct {
		User apiUser `json:"user"`
	}
	if r.Decode(&body) != nil {
		return
	}
	p.mark(n, r.ServedBy, prs, r.End, func(pr *probe) bool { return body.User.Profile[pr.key] == pr.value })
}

// readConversation continues the node's cursor read of the conversation.
func (p *Prober) readConversation(ctx context.Context, n *Node, conv *Conversation, prs []*probe) {
	if _, err := conv.readNew(ctx, p.client, n); err != nil {
		return
	}
	conv.mu.Lock()
	ids := conv.ids[n.Name]
	conv.mu.Unlock()
	at := time.Now()
	p.mark(n, "", prs, at, func(pr *probe) bool {
		conv.mu.Lock()
		defer conv.mu.Unlock()
		return ids[pr.msgID]
	})
}

// readNew reads what the node has after the conversation's cursor on that node, and
// moves the cursor; it returns how many messages were new.
func (c *Conversation) readNew(ctx context.Context, client *Client, n *Node) (int, error) {
	total := 0
	for range 20 {
		c.mu.Lock()
		after := c.cursor[n.Name]
		c.mu.Unlock()
		q := url.Values{"with": {c.Other.Name}, "limit": {"500"}}
		if after != "" {
			q.Set("after", after)
		}
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		r := client.Do(rctx, n.URL(), "GET", "/v1/messages?"+q.Encode(), c.Reader.Anchor.Token, "", nil)
		cancel()
		if r.Status != 200 {
			return total, errStatus(r)
		}
		var page struct {
			Messages []apiMessage `json:"messages"`
			Next     string       `json:"next"`
		}
		if err := r.Decode(&page); err != nil {
			return total, err
		}
		c.mu.Lock()
		if c.ids[n.Name] == nil {
			c.ids[n.Name] = map[string]bool{}
		}
		for _, m := range page.Messages {
			c.order[n.Name] = append(c.order[n.Name], m.ID)
			c.ids[n.Name][m.ID] = true
		}
		if page.Next != "" {
			c.cursor[n.Name] = page.Next
		}
		c.mu.Unlock()
		total += len(page.Messages)
		if len(page.Messages) < 500 {
			return total, nil
		}
	}
	return total, nil
}

// Pending returns the probes not yet seen everywhere (and still measured).
func (p *Prober) Pending() []*probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*probe
	for _, pr := range p.all {
		if !pr.done && !pr.dropped {
			out = append(out, pr)
		}
	}
	return out
}

// Slowest describes, among writes acknowledged before `before` and measured, the one that
// reached its last node latest.
func (p *Prober) Slowest(before time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var worst *probe
	for _, pr := range p.all {
		if !pr.done || pr.op.Skewed || !pr.op.Ack.Before(before) {
			continue
		}
		if worst == nil || pr.op.Ack.Add(pr.op.Visible).After(worst.op.Ack.Add(worst.op.Visible)) {
			worst = pr
		}
	}
	if worst == nil {
		return ""
	}
	o := worst.op
	return fmt.Sprintf("last write to arrive: op %d (%s served by %s) reached %s last, %s after the heal",
		o.ID, o.Kind, o.ServedBy, o.LastNode, fmtDur(o.Ack.Add(o.Visible).Sub(before)))
}

// Stuck describes the writes acknowledged before `before` that are still not everywhere.
func (p *Prober) Stuck(before time.Time) string {
	pending := p.Pending()
	p.mu.Lock()
	defer p.mu.Unlock()
	var parts []string
	for _, pr := range pending {
		if pr.op.Skewed || !pr.op.Ack.Before(before) || len(parts) == 5 {
			continue
		}
		var missing []string
		for _, n := range p.nodes {
			if _, ok := pr.seen[n.Name]; !ok {
				missing = append(missing, n.Name)
			}
		}
		parts = append(parts, fmt.Sprintf("op %d %s by %s missing on %v", pr.op.ID, pr.op.Kind, pr.op.ServedBy, missing))
	}
	return strings.Join(parts, "; ")
}

// WaitConverged waits until every write acknowledged before `before` (skewed ones
// excepted: their timestamps are refused until real time catches up) is visible
// everywhere, and returns how long after `before` that happened.
func (p *Prober) WaitConverged(ctx context.Context, before time.Time, timeout time.Duration) (time.Duration, int, bool) {
	deadline := time.Now().Add(timeout)
	for {
		waiting := 0
		for _, pr := range p.Pending() {
			if pr.op.Ack.Before(before) && !pr.op.Skewed {
				waiting++
			}
		}
		if waiting == 0 {
			return max(time.Since(before), 0), 0, true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Since(before), waiting, false
		}
		select {
		case <-ctx.Done():
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// SeenBy returns the nodes that have shown the write of op, sorted.
func (p *Prober) SeenBy(op *Op) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, pr := range p.all {
		if pr.op == op {
			for n := range pr.seen {
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return out
}

// ShownBy returns the nodes that served a read showing the write of op, sorted: the
// nodes that hold it (SeenBy also names the nodes that relayed such a read).
func (p *Prober) ShownBy(op *Op) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := map[string]bool{}
	for _, pr := range p.all {
		if pr.op == op {
			for n, by := range pr.via {
				if by == "" {
					by = n
				}
				set[by] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// jsonEqual compares a raw JSON value with an encoded one.
func jsonEqual(raw json.RawMessage, want string) bool {
	var a, b any
	if json.Unmarshal(raw, &a) != nil || json.Unmarshal([]byte(want), &b) != nil {
		return false
	}
	ab, _ := json.Marshal(a)
	bb, _ := json.Marshal(b)
	return string(ab) == string(bb)
}
