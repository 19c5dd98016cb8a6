package edge

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

const (
	// streamPing is how often an idle stream sends a comment line, which keeps proxies
	// from closing it, notices a gone client and re-checks the session (idle expiry ends
	// a session without any commit).
	streamPing = 15 * time.Second
	// maxStreamsPerUser caps the live streams one user holds on one node; the cap is not
	// cluster-wide (each node counts its own). A stream whose client went away counts
	// until a ping fails to reach it.
	maxStreamsPerUser = 8
)

// newEntry is a message log entry committed on this node, from a local write or a
// remote one.
type newEntry struct {
	conv  string
	entry crdt.Entry
}

// broker fans committed message entries out to the live streams of their participants,
// and tells a stream when the record of its session or of its user changed, so that it
// re-checks the session at once rather than at its next ping. publish never blocks: a
// subscriber that falls 256 entries behind is cut off, and its client reconnects and
// pages from its cursor. Safe for concurrent use.
type broker struct {
	mu        sync.Mutex
	subs      map[string]map[*subscription]struct{} // user ID → streams
	bySession map[string]map[*subscription]struct{} // session ID → streams
	relayed   map[string]int                        // user ID → streams this node relays to a holder
}

// subscription is one live stream. ch carries its new entries and is closed when the
// broker drops it; recheck (capacity 1, so signals coalesce) says that its session or
// user record changed.
type subscription struct {
	userID    string
	sessionID string
	ch        chan newEntry
	recheck   chan struct{}
	closed    bool
}

func newBroker() *broker {
	return &broker{
		subs:      make(map[string]map[*subscription]struct{}),
		bySession: make(map[string]map[*subscription]struct{}),
		relayed:   make(map[string]int),
	}
}

// subscribe registers a stream of session sessionID of userID. It returns false, and
// registers nothing, when the user already holds maxStreamsPerUser streams here, served
// here or relayed (reserveRelay).
func (b *broker) subscribe(userID, sessionID string) (*subscription, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.heldLocked(userID) >= maxStreamsPerUser {
		return nil, false
	}
	s := &subscription{
		userID: userID, sessionID: sessionID,
		ch: make(chan newEntry, 256), recheck: make(chan struct{}, 1),
	}
	addSub(b.subs, userID, s)
	addSub(b.bySession, sessionID, s)
	return s, true
}

// reserveRelay counts a stream of userID that this node relays to a holder (forward.go)
// against the same cap as those it serves — during a change of placement one flood can
// land on both sides — and returns the function that ends it (safe to call more than
// once); false, and nothing counted, when the user holds maxStreamsPerUser here.
func (b *broker) reserveRelay(userID string) (release func(), ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.heldLocked(userID) >= maxStreamsPerUser {
		return nil, false
	}
	b.relayed[userID]++
	return sync.OnceFunc(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.relayed[userID]--; b.relayed[userID] <= 0 {
			delete(b.relayed, userID)
		}
	}), true
}

// heldLocked returns the streams userID holds here, served or relayed; b.mu is held.
func (b *broker) heldLocked(userID string) int { return len(b.subs[userID]) + b.relayed[userID] }

func addSub(m map[string]map[*subscription]struct{}, key string, s *subscription) {
	if m[key] == nil {
		m[key] = make(map[*subscription]struct{})
	}
	m[key][s] = struct{}{}
}

func removeSub(m map[string]map[*subscription]struct{}, key string, s *subscription) {
	delete(m[key], s)
	if len(m[key]) == 0 {
		delete(m, key)
	}
}

func (b *broker) unsubscribe(s *subscription) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drop(s)
}

// drop removes s and closes its channel; b.mu is held.
func (b *broker) drop(s *subscription) {
	if s.closed {
		return
	}
	s.closed = true
	close(s.ch)
	removeSub(b.subs, s.userID, s)
	removeSub(b.bySession, s.sessionID, s)
}

// publish is storage's OnCommit hook, for local and remote commits alike. A changed
// session record signals the streams of that session, a changed user record (revoke-all,
// erasure) those of that user; new log entries go to the streams of both participants.
func (b *broker) publish(changes []storage.Change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range changes {
		if c.Conv == "" {
			if id, ok := strings.CutPrefix(c.Key, crdt.SessionPrefix); ok {
				signalRecheck(b.bySession[id])
			} else if id, ok := strings.CutPrefix(c.Key, crdt.UserPrefix); ok {
				signalRecheck(b.subs[id])
			}
			continue
		}
		a, z, ok := crdt.Participants(c.Conv)
		if !ok {
			continue
		}
		for _, user := range []string{a, z} {
			for s := range b.subs[user] {
				select {
				case s.ch <- newEntry{conv: c.Conv, entry: c.Entry}:
				default:
					b.drop(s)
				}
			}
			if a == z {
				break
			}
		}
	}
}

// signalRecheck asks each stream of set to re-check its session; a pending signal suffices.
func signalRecheck(set map[*subscription]struct{}) {
	for s := range set {
		select {
		case s.recheck <- struct{}{}:
		default:
		}
	}
}

// closeAll ends every stream; the node calls it when it begins to shut down.
func (b *broker) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, set := range b.subs {
		for s := range set {
			b.drop(s)
		}
	}
}

// streamMessages serves GET /v1/messages/stream: Server-Sent Events, one `message` event
// per new message to or from the caller. The stream ends when the node shuts down, the
// client goes, or the session stops being usable, with an `end` event in the last case.
// The session is checked again whenever its record or its user's record commits (locally
// or by replication) and before each message is written, so a revoked session's stream
// ends at once and delivers nothing committed after the revocation. A user holds at most
// maxStreamsPerUser streams on a node: beyond that, 429 rate_limited.
func (n *Node) streamMessages(c *fiber.Ctx) error {
	p := principal(c)
	tok, err := n.caller(c) // verified already by auth: from the token cache
	if err != nil {
		return err
	}
	// A token verified here is checked again in full; one a forwarding node verified
	// (which names no key) for its expiry here, and in full by that node, which ends its
	// relay when it stops verifying (forward.go, relay).
	forwarded := forwardedOf(c) != nil // c is not to be used once the handler returns
	tokenValid := func() bool {
		if forwarded {
			return n.tokens.now().Before(tok.expires.Add(tokenLeeway))
		}
		return n.tokens.valid(tok, n.tokens.now())
	}
	sub, ok := n.broker.subscribe(p.UserID, p.SessionID)
	if !ok {
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(streamPing.Seconds()))
		return functions.Errorf(functions.ERateLimited, "at most %d open streams per user", maxStreamsPerUser)
	}
	ctx := n.ctx
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer n.broker.unsubscribe(sub)
		ping := time.NewTicker(streamPing)
		defer ping.Stop()
		// usable re-checks the session and the token the stream was opened with; when
		// either has ended it writes the end event.
		usable := func() bool {
			reason := "session ended"
			err := n.sessions.Check(ctx, p)
			if err == nil && !tokenValid() {
				// Expired, or its signing key retired: as on any other request, it no
				// longer opens the session.
				reason, err = "token no longer valid", errBadToken
			} else if errors.Is(err, functions.ErrTokenRenewed) {
				reason = "token replaced by a renewal"
			}
			if err == nil {
				return true
			}
			if errors.Is(err, errBadToken) || functions.ErrorCode(err) == functions.EUnauthorized {
				// The stream ends either way; a client that is gone misses nothing.
				_, _ = fmt.Fprintf(w, "event: end\ndata: {\"reason\":%q}\n\n", reason)
				_ = w.Flush()
			}
			return false
		}
		if _, err := fmt.Fprint(w, ": connected\n\n"); err != nil || w.Flush() != nil {
			return
		}
		// A revocation committed between authentication and subscribing signalled no one.
		if !usable() {
			return
		}
		for {
			select {
			case ne, ok := <-sub.ch:
				if !ok {
					return
				}
				if !usable() {
					return
				}
				m, ok, err := n.messages.ForUser(ctx, p.UserID, ne.conv, ne.entry)
				if err != nil || !ok {
					continue
				}
				body, _ := json.Marshal(m)
				if _, err := fmt.Fprintf(w, "event: message\ndata: %s\n\n", body); err != nil || w.Flush() != nil {
					return
				}
			case <-sub.recheck:
				if !usable() {
					return
				}
			case <-ping.C:
				if !usable() {
					return
				}
				if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil || w.Flush() != nil {
					return
				}
			}
		}
	})
	return nil
}
