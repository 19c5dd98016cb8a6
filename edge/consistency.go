package edge

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/utils"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
)

// Session guarantees across nodes (docs/API.md, "Consistency").
//
// A request may carry X-Sessiond-Bookmark: what its client saw or wrote before. The node
// answers it only from state that includes all of it (cluster.Replicator.Await: wait for
// replication, then pull from the origin or any node that has it, else 503 behind). Every
// successful /v1/ response carries the bookmark of what it showed of the caller's own state
// or wrote, merged with the one the request carried, so a client that keeps the latest
// reads its own writes and never goes back in time, on any node. A session token carries the bookmark of its session's
// creation, so a fresh token works everywhere without the client's help.

const (
	headerBookmark    = "X-Sessiond-Bookmark"
	headerConsistency = "X-Sessiond-Consistency"
	headerLag         = "X-Sessiond-Lag-Ms"
)

// requestContext is the context of one /v1/ request: the node's context, plus the
// bookmark the request asked for and the one of what it showed, which the store adapter
// adds to as handlers read and write.
type requestContext struct {
	context.Context
	owner string // the caller's user ID, once authenticated (see shows)
	app   string // the authenticated app of a service request (see shows)
	// principal is the caller, once auth has authenticated it (authenticated).
	principal     functions.Principal
	authenticated bool
	asked         crdt.Bookmark
	askedRaw      []byte // the header as sent, if it was one bookmark; aliases the request
	shown         crdt.Bookmark

	askedBuf, shownBuf [4]crdt.Timestamp // the bookmarks' storage while they are small

	// waited: a wait or fetch ran for the request, whose goroutines may still hold the
	// context for a moment; it is then not reused.
	waited bool
}

type requestContextKey struct{}

func (r *requestContext) Value(key any) any {
	if key == (requestContextKey{}) {
		return r
	}
	return r.Context.Value(key)
}

// requestIn returns the request context of ctx, or nil outside a request.
func requestIn(ctx context.Context) *requestContext {
	if r, ok := ctx.(*requestContext); ok { // the usual case: no lookup chain
		return r
	}
	r, _ := ctx.Value(requestContextKey{}).(*requestContext)
	return r
}

// shownIn returns the bookmark of what the request of ctx showed, or nil outside one.
func shownIn(ctx context.Context) *crdt.Bookmark {
	if r := requestIn(ctx); r != nil {
		return &r.shown
	}
	return nil
}

// shows reports whether a record read for the request at key, with state m, is the
// caller's own — a user's, or a key of the app's namespace — and so joins the response's
// bookmark. Other users' records (a message's
// recipient, the claimants of a name at login, a session id another user owns) are read
// too, but naming their writes would tell the caller when and where those users last
// wrote. What a request writes always joins (store.Update).
func (r *requestContext) shows(key string, m *crdt.Map) bool {
	if app, _, ok := crdt.ParseKVKey(key); ok {
		return r.app != "" && app == r.app // an app's keys are its own
	}
	if r.app != "" {
		// A service request: its app's subjects' records and sessions are the app's own.
		if strings.HasPrefix(key, crdt.UserPrefix) || strings.HasPrefix(key, crdt.SessionPrefix) {
			f, ok := m.Field(crdt.FieldApp) // crdt.FieldSessionApp in a session's record
			return ok && string(f.Value) == r.app
		}
		return false
	}
	if r.owner == "" {
		return false
	}
	if id, ok := strings.CutPrefix(key, crdt.UserPrefix); ok {
		return id == r.owner
	}
	if strings.HasPrefix(key, crdt.SessionPrefix) {
		f, ok := m.Field(crdt.FieldUser)
		return ok && string(f.Value) == r.owner
	}
	return false
}

// consistency meets the request's bookmark before the handler runs, unless the client
// opted out with X-Sessiond-Consistency: eventual (then the response says how far
// behind this node may be).
func (n *Node) consistency(c *fiber.Ctx) error {
	// Request contexts are reused: one per request was most of what bookmarks added to a
	// read's allocations. Nothing keeps one once the handler has returned (the live stream
	// works on the node's context), unless a wait ran.
	rc, _ := n.requestContexts.Get().(*requestContext)
	if rc == nil {
		rc = new(requestContext)
	}
	parent := c.UserContext()
	rc.Context, rc.app = parent, serviceApp(c) // the rest is zero: the pool holds only contexts zeroed below
	rc.asked, rc.shown = crdt.NewBookmark(rc.askedBuf[:]), crdt.NewBookmark(rc.shownBuf[:])
	c.SetUserContext(rc)
	defer func() {
		c.SetUserContext(parent)
		if !rc.waited {
			*rc = requestContext{}
			n.requestContexts.Put(rc)
		}
	}()
	eventual := false
	switch v := c.Get(headerConsistency); v {
	case "", "bookmark":
	case "eventual":
		eventual = true
	default:
		return badRequest(headerConsistency + ` must be "eventual" or "bookmark"`)
	}
	if raw := c.Request().Header.Peek(headerBookmark); len(raw) > 0 {
		if err := rc.asked.Parse(utils.UnsafeString(raw)); err != nil { // not kept: no copy
			return functions.Errorf(functions.EInvalid, "invalid %s: send back a value this API returned", headerBookmark)
		}
		if bytes.IndexByte(raw, ',') < 0 && len(bytes.TrimSpace(raw)) == len(raw) {
			rc.askedRaw = raw // read before the handler returns, while raw is valid
		}
	}
	if eventual {
		c.Set(headerLag, strconv.FormatInt(n.maxLag().Milliseconds(), 10))
	} else if !rc.asked.IsZero() {
		if err := n.await(c, rc.asked); err != nil {
			return err
		}
	}
	if err := c.Next(); err != nil {
		return err // no bookmark: nothing was shown, and what was read is not the caller's to see
	}
	n.setBookmark(c, rc)
	return nil
}

// setBookmark sets the response's bookmark: what the request asked for and what it
// showed. A request that showed nothing new gets back what it sent, as it was sent.
func (n *Node) setBookmark(c *fiber.Ctx, rc *requestContext) {
	h := &c.Response().Header
	if rc.shown.CoveredBy(rc.asked) {
		if rc.askedRaw != nil {
			h.SetCanonical(bookmarkKey, rc.askedRaw)
			return
		}
		rc.shown = rc.asked
	} else {
		rc.shown.Merge(rc.asked)
	}
	if !rc.shown.IsZero() {
		var buf [2 * crdt.MaxBookmarkText]byte
		h.SetCanonical(bookmarkKey, rc.shown.AppendText(buf[:0]))
	}
}

// bookmarkKey is headerBookmark in fasthttp's canonical form.
var bookmarkKey = []byte(headerBookmark)

// errBehind is what a client gets when this node cannot show what its bookmark covers.
var errBehind = functions.Errorf(functions.EBehind,
	"this node has not yet caught up with your previous requests and cannot reach a node that has; retry, or send the request to another node")

// await meets bookmark b for the request, within BookmarkTimeout: nil, or errBehind with
// Retry-After set.
func (n *Node) await(c *fiber.Ctx, b crdt.Bookmark) error {
	return n.awaitIn(c, b, partitionIn(c))
}

// awaitIn is await in partition p.
func (n *Node) awaitIn(c *fiber.Ctx, b crdt.Bookmark, p int) error {
	if n.replicator.Covers(b, p) {
		return nil
	}
	// A request that has to wait holds one of the node's bounded waiting slots; one
	// client address holds at most maxAwaitingPerAddress of them, so a flood of made-up
	// bookmarks from one client cannot crowd out everyone else's.
	addr := n.clientAddr(c)
	if !n.awaiting.take(addr) {
		c.Set(fiber.HeaderRetryAfter, "1")
		return errBehind
	}
	defer n.awaiting.release(addr)
	a, err := n.replicator.Await(c.UserContext(), b, p, n.cfg.BookmarkWait, n.cfg.BookmarkTimeout)
	if rc := requestIn(c.UserContext()); rc != nil && a != cluster.Covered {
		rc.waited = true
	}
	if errors.Is(err, cluster.ErrBehind) {
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(n.surelyBehind(b).Seconds()))
		return errBehind
	}
	return err
}

// maxBehindRetry bounds the Retry-After of a bookmark too far ahead of this node's clock.
const maxBehindRetry = time.Minute

// surelyBehind returns how long this node will stay behind bookmark b whatever it
// receives: until its clock comes within MaxSkew of b's latest mark, as it refuses writes
// stamped further ahead (zero for a bookmark within that), at most maxBehindRetry (a
// made-up bookmark may lie years ahead).
func (n *Node) surelyBehind(b crdt.Bookmark) time.Duration {
	var latest int64
	for _, ts := range b.Marks() {
		latest = max(latest, ts.Wall)
	}
	d := time.Duration(latest - n.cfg.Now().Add(n.cfg.MaxSkew).UnixNano())
	return min(max(d, 0), maxBehindRetry)
}

// maxLag returns the largest replication delay last observed from any live peer.
func (n *Node) maxLag() time.Duration {
	var lag time.Duration
	for _, st := range n.replicator.Status() {
		lag = max(lag, st.Lag)
	}
	return lag
}

// maxAwaitingPerAddress bounds the bookmark waits one client address holds at once (the
// node holds at most 1024 in all; see cluster.Replicator.Await).
const maxAwaitingPerAddress = 32

// slots counts what each key (a client address, a user) holds at once, up to limit.
// Safe for concurrent use.
type slots struct {
	limit int
	mu    sync.Mutex
	held  map[string]int
}

// take takes a slot for key, or reports false when key holds limit.
func (s *slots) take(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[key] >= s.limit {
		return false
	}
	if s.held == nil {
		s.held = make(map[string]int)
	}
	s.held[key]++
	return true
}

func (s *slots) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[key] <= 1 {
		delete(s.held, key)
	} else {
		s.held[key]--
	}
}
