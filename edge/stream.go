package edge

import (
	"bufio"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// streamPing is how often an idle stream sends a comment line, which keeps proxies from
// closing it and notices a revoked session or a gone client.
const streamPing = 15 * time.Second

// newEntry is a message log entry committed on this node, from a local write or a
// remote one.
type newEntry struct {
	conv  string
	entry crdt.Entry
}

// broker fans committed message entries out to the live streams of their participants.
// publish never blocks: a subscriber that falls 256 entries behind is cut off, and its
// client reconnects and pages from its cursor. Safe for concurrent use.
type broker struct {
	mu   sync.Mutex
	subs map[string]map[*subscription]struct{} // user ID → streams
}

type subscription struct {
	userID string
	ch     chan newEntry
	closed bool
}

func newBroker() *broker {
	return &broker{subs: make(map[string]map[*subscription]struct{})}
}

func (b *broker) subscribe(userID string) *subscription {
	s := &subscription{userID: userID, ch: make(chan newEntry, 256)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs[userID] == nil {
		b.subs[userID] = make(map[*subscription]struct{})
	}
	b.subs[userID][s] = struct{}{}
	return s
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
	delete(b.subs[s.userID], s)
	if len(b.subs[s.userID]) == 0 {
		delete(b.subs, s.userID)
	}
}

// publish is storage's OnCommit hook.
func (b *broker) publish(changes []storage.Change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range changes {
		if c.Conv == "" {
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
// client goes, or the session stops being usable (checked at each ping), with an `end`
// event in the last case.
func (n *Node) streamMessages(c *fiber.Ctx) error {
	p := principal(c)
	sub := n.broker.subscribe(p.UserID)
	ctx := n.ctx
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set("X-Accel-Buffering", "no")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer n.broker.unsubscribe(sub)
		ping := time.NewTicker(streamPing)
		defer ping.Stop()
		if _, err := fmt.Fprint(w, ": connected\n\n"); err != nil || w.Flush() != nil {
			return
		}
		for {
			select {
			case ne, ok := <-sub.ch:
				if !ok {
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
			case <-ping.C:
				if err := n.sessions.Check(ctx, p); err != nil {
					fmt.Fprint(w, "event: end\ndata: {\"reason\":\"session ended\"}\n\n")
					w.Flush()
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
