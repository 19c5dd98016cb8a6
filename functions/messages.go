package functions

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// Message is a message as the API shows it; From and To are usernames. Package api owns
// the JSON shape of it, Conversation and Page.
type Message = api.Message

// Conversation summarises a conversation for its participant.
type Conversation = api.Conversation

// Send is the request to send a message to the user named To. After, when set, is the ID
// of the sender's previous message: the new one is ordered after it even when it is sent
// through another node that has not yet received the previous one.
type Send struct {
	To    string
	Body  string
	After string
}

// Page is one page of a conversation and the cursor for what comes after it.
type Page = api.Page

// Messages sends messages and reads conversations: one append-only log per pair of
// users. It holds no state between calls and is safe for concurrent use.
type Messages struct {
	Store Store
	Clock Clock
}

// Send appends a message from the caller to the conversation with req.To.
func (s *Messages) Send(ctx context.Context, p Principal, req Send) (Message, error) {
	if len(req.Body) == 0 || len(req.Body) > MaxMessageBody {
		return Message{}, Errorf(EInvalid, "body must be 1 to %d bytes", MaxMessageBody)
	}
	if err := validText("body", req.Body, MaxMessageBody, true); err != nil {
		return Message{}, err
	}
	var prev crdt.EntryID
	if req.After != "" {
		var err error
		if prev, err = parseEntryID(req.After); err != nil {
			return Message{}, err
		}
	}
	to, err := s.lookup(ctx, req.To)
	if err != nil {
		return Message{}, err
	}
	msg := crdt.Message{From: p.UserID, To: to.ID, Body: req.Body}
	conv := crdt.ConversationID(p.UserID, to.ID)
	var e crdt.Entry
	err = s.Store.Update(ctx, func(tx Tx) error {
		// The sender may have been erased by a concurrent request; refuse, as the erasure
		// would drop the message anyway.
		m, ok, err := tx.Record(crdt.UserKey(p.UserID))
		if err != nil {
			return err
		}
		if !ok || crdt.ReadUser(p.UserID, &m).Deleted {
			return errSessionEnded
		}
		if req.After != "" {
			if err := checkAfter(tx, conv, prev, p.UserID); err != nil {
				return err
			}
		}
		e, err = tx.Append(conv, msg)
		return err
	})
	if err != nil {
		return Message{}, err
	}
	return messageOf(e, msg, p.Username, to.Username), nil
}

// checkAfter checks that prev names a message of sender's in conv that this node holds.
// Then the new entry orders after it with no help from the client: the node's clock has
// already passed every timestamp it holds (storage observes each change it applies), so
// a client's `after` never moves the clock. A message this node does not hold yet is
// refused rather than trusted: a client that sends the bookmark of its previous message
// never meets that, since the node first catches up with the bookmark.
func checkAfter(tx Tx, conv string, prev crdt.EntryID, sender string) error {
	e, ok, err := tx.Entry(conv, prev)
	if err != nil {
		return err
	}
	if !ok {
		return Errorf(EInvalid, "after names no message of yours in this conversation")
	}
	m, err := crdt.DecodeMessage(e.Data)
	if err != nil || m.Erased || m.From != sender {
		return Errorf(EInvalid, "after names no message of yours in this conversation")
	}
	return nil
}

// lookupShown finds the user shown under name: a username's owner, or an account that
// lost its username to a concurrent registration, shown as NAME#ID-PREFIX (see
// displayName).
func (s *Messages) lookupShown(ctx context.Context, name string) (crdt.User, error) {
	username, prefix, lost := strings.Cut(name, lostNameSep)
	if !lost {
		return s.lookup(ctx, name)
	}
	if validUsername(username) != nil || len(prefix) != lostNameID {
		return crdt.User{}, Errorf(ENotFound, "no user %q", name)
	}
	us, err := claimants(ctx, s.Store, username)
	if err != nil {
		return crdt.User{}, err
	}
	for i, u := range us {
		if i > 0 && strings.HasPrefix(u.ID, prefix) {
			return u, nil
		}
	}
	return crdt.User{}, Errorf(ENotFound, "no user %q", name)
}

func (s *Messages) lookup(ctx context.Context, username string) (crdt.User, error) {
	if validUsername(username) != nil {
		return crdt.User{}, Errorf(ENotFound, "no user %q", username)
	}
	us, err := claimants(ctx, s.Store, username)
	if err != nil {
		return crdt.User{}, err
	}
	if len(us) == 0 {
		return crdt.User{}, Errorf(ENotFound, "no user %q", username)
	}
	return us[0], nil
}

func messageOf(e crdt.Entry, m crdt.Message, from, to string) Message {
	return Message{ID: EntryIDString(e.ID), From: from, To: to, Body: m.Body, SentAt: e.ID.TS.Time()}
}

// EntryIDString formats a message ID for the API.
func EntryIDString(id crdt.EntryID) string { return hex.EncodeToString(id.AppendBinary(nil)) }

func parseEntryID(s string) (crdt.EntryID, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != crdt.EntryIDSize {
		return crdt.EntryID{}, Errorf(EInvalid, "after must be a message id")
	}
	id, err := crdt.DecodeEntryID(b)
	if err != nil {
		return crdt.EntryID{}, Errorf(EInvalid, "after must be a message id")
	}
	return id, nil
}

// List returns up to limit messages of the caller's conversation with the user named
// with, after cursor (from the start when empty), in conversation order, and the cursor
// for the next call. The cursor never skips a message that arrives late from another node.
// A conversation that holds an erasure marker is gone, as the erased user is: ENotFound.
func (s *Messages) List(ctx context.Context, p Principal, with, cursor string, limit int) (Page, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return Page{}, err
	}
	after, err := decodeCursor(cursor)
	if err != nil {
		return Page{}, err
	}
	other, err := s.lookupShown(ctx, with)
	if err != nil {
		return Page{}, err
	}
	entries, next, err := s.Store.ReadLog(ctx, crdt.ConversationID(p.UserID, other.ID), after, limit)
	if err != nil {
		return Page{}, err
	}
	names := map[string]string{p.UserID: p.Username, other.ID: with}
	page := Page{Messages: []Message{}, Next: encodeCursor(next)}
	for _, e := range entries {
		if crdt.IsErasureMarker(e.Data) {
			// The store shows no entry of such a conversation; one that does still
			// shows nothing of it.
			return Page{}, Errorf(ENotFound, "no user %q", with)
		}
		if m, ok := s.decode(e, names); ok {
			page.Messages = append(page.Messages, m)
		}
	}
	return page, nil
}

// decode returns the message in entry e as shown to a participant, and false for an
// entry that is no message: an erasure marker, or data this release cannot read.
func (s *Messages) decode(e crdt.Entry, names map[string]string) (Message, bool) {
	m, err := crdt.DecodeMessage(e.Data)
	if err != nil || m.Erased {
		return Message{}, false
	}
	return messageOf(e, m, names[m.From], names[m.To]), true
}

// ConversationPage is a page of the caller's conversations (Messages.Conversations).
type ConversationPage = api.ConversationsResponse

// Conversations returns a page of the caller's conversations, newest first: up to limit
// (DefaultPageLimit when 0, at most MaxPageLimit) after the conversation that cursor
// names (from the newest when empty), and the cursor of the next page, empty after the
// last. Only a page's conversations cost the lookups of their participants. A
// conversation that holds an erasure marker is not listed (the store lists none; one
// that does would show it as its last entry). The order is by latest message, so a
// conversation that gets a message between two calls moves ahead of the cursor: the
// pages after it do not list it, whether an earlier page did or not (a client that needs
// every conversation at one moment starts again from the first page, which lists it).
func (s *Messages) Conversations(ctx context.Context, p Principal, cursor string, limit int) (ConversationPage, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return ConversationPage{}, err
	}
	after, err := decodeConvCursor(cursor)
	if err != nil {
		return ConversationPage{}, err
	}
	infos, err := s.Store.Conversations(ctx, p.UserID)
	if err != nil {
		return ConversationPage{}, err
	}
	i := 0
	if cursor != "" {
		i = len(infos)
		if j := slices.IndexFunc(infos, after.before); j >= 0 {
			i = j
		}
	}
	page := ConversationPage{Conversations: []Conversation{}}
	for ; i < len(infos) && len(page.Conversations) < limit; i++ {
		c, ok, err := s.conversation(ctx, p, infos[i])
		if err != nil {
			return ConversationPage{}, err
		}
		if ok {
			page.Conversations = append(page.Conversations, c)
		}
	}
	if i < len(infos) {
		page.Next = convCursor{last: infos[i-1].Last.ID, conv: infos[i-1].ID}.encode()
	}
	return page, nil
}

// conversation returns the caller's conversation info as shown, and false when it is not
// shown: it holds an erasure marker, the other participant is erased, or its last entry
// is no message.
func (s *Messages) conversation(ctx context.Context, p Principal, c ConversationInfo) (Conversation, bool, error) {
	if crdt.IsErasureMarker(c.Last.Data) {
		return Conversation{}, false, nil
	}
	other, live, err := liveUser(ctx, s.Store, c.With)
	if err != nil || !live {
		return Conversation{}, false, err
	}
	shown, err := displayName(ctx, s.Store, other)
	if err != nil {
		return Conversation{}, false, err
	}
	names := map[string]string{p.UserID: p.Username, other.ID: shown}
	m, ok := s.decode(c.Last, names)
	if !ok {
		return Conversation{}, false, nil
	}
	return Conversation{With: shown, LastMessage: m, Count: c.Count}, true, nil
}

// pageLimit returns the size of a page asked for with limit: DefaultPageLimit for 0,
// EInvalid beyond 1 to MaxPageLimit.
func pageLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return DefaultPageLimit, nil
	case limit < 0 || limit > MaxPageLimit:
		return 0, Errorf(EInvalid, "limit must be 1 to %d", MaxPageLimit)
	}
	return limit, nil
}

// convCursor names the last conversation of a page of Conversations: its newest entry
// and its ID, the two keys the store orders conversations by.
type convCursor struct {
	last crdt.EntryID
	conv string
}

func (c convCursor) encode() string {
	return base64.RawURLEncoding.EncodeToString(append(c.last.AppendBinary(nil), c.conv...))
}

func decodeConvCursor(s string) (convCursor, error) {
	if s == "" {
		return convCursor{}, nil
	}
	bad := Errorf(EInvalid, "invalid cursor")
	if len(s) > maxCursor {
		return convCursor{}, bad
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) <= crdt.EntryIDSize {
		return convCursor{}, bad
	}
	id, err := crdt.DecodeEntryID(b[:crdt.EntryIDSize])
	if err != nil {
		return convCursor{}, bad
	}
	return convCursor{last: id, conv: string(b[crdt.EntryIDSize:])}, nil
}

// before reports whether c orders after the cursor's conversation (newest entry first,
// then by ID, as the store lists them).
func (cc convCursor) before(c ConversationInfo) bool {
	switch cmp := c.Last.ID.Compare(cc.last); {
	case cmp != 0:
		return cmp < 0
	default:
		return c.ID > cc.conv
	}
}

// ForUser returns the message in entry e of conversation conv as userID should see it,
// and false when userID is not one of its participants or e is no message (an erasure
// marker). The live message stream uses it.
func (s *Messages) ForUser(ctx context.Context, userID, conv string, e crdt.Entry) (Message, bool, error) {
	a, b, ok := crdt.Participants(conv)
	if !ok || (a != userID && b != userID) {
		return Message{}, false, nil
	}
	names := map[string]string{}
	for _, id := range []string{a, b} {
		u, _, err := liveUser(ctx, s.Store, id)
		if err != nil {
			return Message{}, false, err
		}
		if names[id], err = displayName(ctx, s.Store, u); err != nil {
			return Message{}, false, err
		}
	}
	m, ok := s.decode(e, names)
	return m, ok, nil
}

func encodeCursor(c crdt.Cursor) string {
	return base64.RawURLEncoding.EncodeToString(c.AppendBinary(nil))
}

// maxCursor bounds a cursor's length: 9 bytes per origin, far more origins than a
// cluster ever has.
const maxCursor = 4096

func decodeCursor(s string) (crdt.Cursor, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > maxCursor || !utf8.ValidString(s) {
		return nil, Errorf(EInvalid, "invalid cursor")
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, Errorf(EInvalid, "invalid cursor")
	}
	c, err := crdt.DecodeCursor(b)
	if err != nil {
		return nil, Errorf(EInvalid, "invalid cursor")
	}
	return c, nil
}

// Export calls conv for each of the caller's conversations, then msg for each of its
// messages in conversation order, reading MaxPageLimit messages at a time, so a
// conversation of any length costs one page of memory. It lists what Conversations and
// List show (no conversation with an erased user) and stops at the first error of conv,
// msg or the store.
func (s *Messages) Export(ctx context.Context, p Principal, conv func(Conversation) error, msg func(Message) error) error {
	// One listing, not pages: a conversation that gets a message while the export runs
	// would move ahead of a page's cursor and be left out.
	infos, err := s.Store.Conversations(ctx, p.UserID)
	if err != nil {
		return err
	}
	for _, info := range infos {
		c, ok, err := s.conversation(ctx, p, info)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		if err := s.exportConversation(ctx, p, c, conv, msg); err != nil {
			return err
		}
	}
	return nil
}

// exportConversation is Export's work for one conversation c.
func (s *Messages) exportConversation(ctx context.Context, p Principal, c Conversation, conv func(Conversation) error, msg func(Message) error) error {
	if err := conv(c); err != nil {
		return err
	}
	cursor := ""
	for {
		page, err := s.List(ctx, p, c.With, cursor, MaxPageLimit)
		if ErrorCode(err) == ENotFound {
			return nil // erased since it was listed
		}
		if err != nil {
			return err
		}
		for _, m := range page.Messages {
			if err := msg(m); err != nil {
				return err
			}
		}
		if page.Next == cursor {
			return nil // nothing more: the cursor moves with every entry read
		}
		cursor = page.Next
	}
}
