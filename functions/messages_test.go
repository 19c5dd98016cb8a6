package functions

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
)

// chatEnv is a testEnv with three signed-in users.
type chatEnv struct {
	*testEnv
	alice, bob, carol Principal
}

func newChatEnv(t *testing.T) *chatEnv {
	t.Helper()
	e := &chatEnv{testEnv: newTestEnv(t)}
	for _, u := range []struct {
		name string
		p    *Principal
	}{{"alice", &e.alice}, {"bob", &e.bob}, {"carol", &e.carol}} {
		e.mustRegister(t, u.name, testPassword)
		_, *u.p = e.mustLogin(t, u.name, testPassword)
	}
	return e
}

func (e *chatEnv) mustSend(t *testing.T, from Principal, to, body string) Message {
	t.Helper()
	m, err := e.messages.Send(context.Background(), from, Send{To: to, Body: body})
	if err != nil {
		t.Fatalf("Send(%s → %s): %v", from.Username, to, err)
	}
	return m
}

func bodies(ms []Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Body
	}
	return out
}

func TestMessagesSend(t *testing.T) {
	ctx := context.Background()
	t.Run("OK", func(t *testing.T) {
		e := newChatEnv(t)
		e.now.Advance(time.Minute)
		m := e.mustSend(t, e.alice, "bob", "hi")
		want := Message{ID: m.ID, From: "alice", To: "bob", Body: "hi", SentAt: testEpoch.Add(time.Minute)}
		if m != want {
			t.Errorf("Send=%+v, want %+v", m, want)
		}
		if len(m.ID) != 2*crdt.EntryIDSize {
			t.Errorf("ID=%q, want %d hex digits", m.ID, 2*crdt.EntryIDSize)
		}
		m2 := e.mustSend(t, e.alice, "bob", "hi")
		if m2.ID == m.ID {
			t.Errorf("second message ID=%q, want a new one", m2.ID)
		}
		page, err := e.messages.List(ctx, e.bob, "alice", "", 0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(page.Messages) != 2 || page.Messages[0] != m {
			t.Errorf("bob's List=%+v, want %+v first of 2", page.Messages, m)
		}
	})

	for _, tc := range []struct {
		name, body, code string
	}{
		{"OK/OneByte", "x", ""},
		{"OK/MaxBody", strings.Repeat("x", MaxMessageBody), ""},
		{"OK/MaxBodyMultibyte", strings.Repeat("é", MaxMessageBody/2), ""},
		{"OK/Multiline", "line one\r\n\tline two\n", ""},
		{"OK/Unicode", "こんにちは 👋", ""},
		{"ErrInvalid/Empty", "", EInvalid},
		{"ErrInvalid/TooLong", strings.Repeat("x", MaxMessageBody+1), EInvalid},
		{"ErrInvalid/TooLongMultibyte", strings.Repeat("é", MaxMessageBody/2) + "x", EInvalid},
		{"ErrInvalid/NUL", "a\x00b", EInvalid},
		{"ErrInvalid/Escape", "\x1b[2J", EInvalid},
		{"ErrInvalid/Bell", "ding\x07", EInvalid},
		{"ErrInvalid/DEL", "a\x7f", EInvalid},
		{"ErrInvalid/C1", "a\u009bb", EInvalid},
		{"ErrInvalid/InvalidUTF8", "a\xffb", EInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newChatEnv(t)
			m, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: tc.body})
			wantCode(t, err, tc.code)
			page, _ := e.messages.List(ctx, e.bob, "alice", "", 0)
			if tc.code != "" {
				if len(page.Messages) != 0 {
					t.Errorf("a refused message was stored: %+v", page.Messages)
				}
				return
			}
			if m.Body != tc.body || len(page.Messages) != 1 || page.Messages[0].Body != tc.body {
				t.Errorf("Body=%q, stored %q, want %q", m.Body, bodies(page.Messages), tc.body)
			}
		})
	}

	for _, tc := range []struct{ name, to string }{
		{"Unknown", "dave"},
		{"InvalidName", "Bob!"},
		{"Empty", ""},
	} {
		t.Run("ErrNotFound/"+tc.name, func(t *testing.T) {
			e := newChatEnv(t)
			_, err := e.messages.Send(ctx, e.alice, Send{To: tc.to, Body: "hello?"})
			wantCode(t, err, ENotFound)
		})
	}

	t.Run("ErrNotFound/ErasedRecipient", func(t *testing.T) {
		e := newChatEnv(t)
		if err := e.users.Delete(ctx, e.bob.UserID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		_, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "hello?"})
		wantCode(t, err, ENotFound)
	})

	t.Run("ErrInternal", func(t *testing.T) {
		e := newChatEnv(t)
		e.store.setErr(errBoom)
		_, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "hi"})
		wantCode(t, err, EInternal)
	})
}

func TestMessagesList(t *testing.T) {
	ctx := context.Background()

	t.Run("OK/Paging", func(t *testing.T) {
		e := newChatEnv(t)
		var want []string
		for i := range 7 {
			from, to := e.alice, "bob"
			if i%3 == 2 {
				from, to = e.bob, "alice"
			}
			e.mustSend(t, from, to, fmt.Sprintf("m%d", i))
			want = append(want, fmt.Sprintf("m%d", i))
			e.now.Advance(time.Second)
		}
		e.mustSend(t, e.alice, "carol", "not for bob")

		var got []string
		var ids []string
		cursor := ""
		for range 10 {
			page, err := e.messages.List(ctx, e.alice, "bob", cursor, 3)
			if err != nil {
				t.Fatalf("List(after %q): %v", cursor, err)
			}
			if len(page.Messages) > 3 {
				t.Fatalf("len(Messages)=%d, want at most 3", len(page.Messages))
			}
			if page.Next == "" {
				t.Fatalf("Next=%q, want a cursor", page.Next)
			}
			for _, m := range page.Messages {
				got = append(got, m.Body)
				ids = append(ids, m.ID)
				if (m.From != "alice" || m.To != "bob") && (m.From != "bob" || m.To != "alice") {
					t.Errorf("message %q is from %q to %q, want between alice and bob", m.Body, m.From, m.To)
				}
			}
			cursor = page.Next
			if len(page.Messages) == 0 {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("pages=%q, want %q", got, want)
		}
		if !slices.IsSorted(ids) {
			t.Errorf("IDs=%q, want them ascending in conversation order", ids)
		}

		// The exhausted cursor picks up what arrives later, and only that.
		e.mustSend(t, e.bob, "alice", "later")
		page, err := e.messages.List(ctx, e.alice, "bob", cursor, 3)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got := bodies(page.Messages); !slices.Equal(got, []string{"later"}) {
			t.Errorf("after the last page=%q, want %q", got, []string{"later"})
		}

		// Bob reads the same conversation the same way.
		page, err = e.messages.List(ctx, e.bob, "alice", "", MaxPageLimit)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got, want := bodies(page.Messages), append(want, "later"); !slices.Equal(got, want) {
			t.Errorf("bob's List=%q, want %q", got, want)
		}
		// Carol is in neither's conversation.
		page, err = e.messages.List(ctx, e.carol, "bob", "", 0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(page.Messages) != 0 {
			t.Errorf("carol's List with bob=%q, want none", bodies(page.Messages))
		}
	})

	t.Run("OK/LateArrival", func(t *testing.T) {
		// Entries from other nodes arrive out of order: one stamped before what the reader
		// has already seen, and one whose predecessor from its origin is still missing.
		// The cursor skips neither and returns each once.
		e := newChatEnv(t)
		conv := crdt.ConversationID(e.alice.UserID, e.bob.UserID)
		remote := func(node crdt.NodeID, seq uint64, at time.Duration, body string) crdt.Entry {
			return crdt.Entry{
				ID:   crdt.EntryID{TS: crdt.Timestamp{Wall: testEpoch.Add(at).UnixNano(), Node: node}, Seq: seq},
				Data: crdt.Message{From: e.bob.UserID, To: e.alice.UserID, Body: body}.AppendBinary(nil),
			}
		}
		e.mustSend(t, e.alice, "bob", "local 1")
		e.now.Advance(time.Minute)
		e.mustSend(t, e.alice, "bob", "local 2")
		page, err := e.messages.List(ctx, e.alice, "bob", "", 0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got, want := bodies(page.Messages), []string{"local 1", "local 2"}; !slices.Equal(got, want) {
			t.Fatalf("List=%q, want %q", got, want)
		}

		e.store.insert(conv, remote(2, 1, -time.Hour, "early from node 2"))
		e.store.insert(conv, remote(3, 2, -time.Hour, "node 3 second"))
		page, err = e.messages.List(ctx, e.alice, "bob", page.Next, 0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got, want := bodies(page.Messages), []string{"early from node 2"}; !slices.Equal(got, want) {
			t.Fatalf("List=%q, want %q (node 3's second entry held back until its first)", got, want)
		}

		e.store.insert(conv, remote(3, 1, -2*time.Hour, "node 3 first"))
		page, err = e.messages.List(ctx, e.alice, "bob", page.Next, 0)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if got, want := bodies(page.Messages), []string{"node 3 first", "node 3 second"}; !slices.Equal(got, want) {
			t.Fatalf("List=%q, want %q", got, want)
		}
		page, err = e.messages.List(ctx, e.alice, "bob", page.Next, 0)
		if err != nil || len(page.Messages) != 0 {
			t.Fatalf("List=%q, %v, want nothing new", bodies(page.Messages), err)
		}
		if page.Messages == nil {
			t.Errorf("Messages=nil, want an empty slice (JSON [])")
		}
	})

	t.Run("OK/Limit", func(t *testing.T) {
		e := newChatEnv(t)
		for i := range DefaultPageLimit + 1 {
			e.mustSend(t, e.alice, "bob", fmt.Sprint(i))
		}
		for _, tc := range []struct{ limit, want int }{
			{0, DefaultPageLimit},
			{1, 1},
			{DefaultPageLimit + 1, DefaultPageLimit + 1},
			{MaxPageLimit, DefaultPageLimit + 1},
		} {
			page, err := e.messages.List(ctx, e.alice, "bob", "", tc.limit)
			if err != nil {
				t.Fatalf("List(limit %d): %v", tc.limit, err)
			}
			if len(page.Messages) != tc.want {
				t.Errorf("List(limit %d): len(Messages)=%d, want %d", tc.limit, len(page.Messages), tc.want)
			}
		}
	})

	for _, tc := range []struct {
		name, with, cursor string
		limit              int
		code               string
	}{
		{"ErrInvalid/NegativeLimit", "bob", "", -1, EInvalid},
		{"ErrInvalid/LimitOverMax", "bob", "", MaxPageLimit + 1, EInvalid},
		{"ErrInvalid/CursorNotBase64", "bob", "!!!", 0, EInvalid},
		{"ErrInvalid/CursorPadded", "bob", "AQA=", 0, EInvalid},
		{"ErrInvalid/CursorBadVersion", "bob", base64.RawURLEncoding.EncodeToString([]byte{9, 0}), 0, EInvalid},
		{"ErrInvalid/CursorTruncated", "bob", base64.RawURLEncoding.EncodeToString([]byte{1, 1, 0, 0}), 0, EInvalid},
		{"ErrInvalid/CursorTrailingBytes", "bob", base64.RawURLEncoding.EncodeToString([]byte{1, 0, 0}), 0, EInvalid},
		{"ErrInvalid/CursorZeroMark", "bob", base64.RawURLEncoding.EncodeToString([]byte{1, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0}), 0, EInvalid},
		{"ErrInvalid/CursorTooLong", "bob", strings.Repeat("A", maxCursor+1), 0, EInvalid},
		{"ErrInvalid/CursorInvalidUTF8", "bob", "AQA\xff", 0, EInvalid},
		{"ErrNotFound/UnknownUser", "dave", "", 0, ENotFound},
		{"ErrNotFound/InvalidName", "Dave", "", 0, ENotFound},
		{"OK/EmptyConversation", "carol", "", 0, ""},
		{"OK/EmptyCursor", "bob", encodeCursor(nil), 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newChatEnv(t)
			e.mustSend(t, e.alice, "bob", "hi")
			_, err := e.messages.List(ctx, e.alice, tc.with, tc.cursor, tc.limit)
			wantCode(t, err, tc.code)
		})
	}

	t.Run("ErrInternal", func(t *testing.T) {
		e := newChatEnv(t)
		e.store.setErr(errBoom)
		_, err := e.messages.List(ctx, e.alice, "bob", "", 0)
		wantCode(t, err, EInternal)
	})

	// The erasure of bob's account is known here only from a marker in the conversation,
	// as on a node that holds alice's partition and not bob's: the conversation is gone,
	// as it is once bob's record says he is erased.
	for _, tc := range []struct {
		name string
		p    func(e *chatEnv) Principal
		with string
	}{{"ErrNotFound/MarkerForOne", func(e *chatEnv) Principal { return e.alice }, "bob"},
		{"ErrNotFound/MarkerForOther", func(e *chatEnv) Principal { return e.bob }, "alice"}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newChatEnv(t)
			e.mustSend(t, e.alice, "bob", "hi")
			insertMarker(e, e.bob.UserID, e.alice.UserID)
			_, err := e.messages.List(ctx, tc.p(e), tc.with, "", 0)
			wantCode(t, err, ENotFound)
		})
	}
}

// insertMarker delivers, as replication would, an erasure marker of erased in its
// conversation with other, stamped by another node.
func insertMarker(e *chatEnv, erased, other string) crdt.Entry {
	en := crdt.Entry{ID: crdt.EntryID{TS: crdt.Timestamp{Wall: e.now.Now().UnixNano(), Node: 9}, Seq: 1},
		Data: crdt.ErasureMarker(erased, other).AppendBinary(nil)}
	e.store.insert(crdt.ConversationID(erased, other), en)
	return en
}

func TestMessagesConversations(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	e.mustRegister(t, "dave", testPassword)
	_, dave := e.mustLogin(t, "dave", testPassword)

	e.mustSend(t, e.alice, "bob", "b1")
	e.now.Advance(time.Second)
	e.mustSend(t, e.carol, "alice", "c1")
	e.now.Advance(time.Second)
	e.mustSend(t, e.alice, "carol", "c2")
	e.now.Advance(time.Second)
	e.mustSend(t, e.bob, "alice", "b2")
	e.now.Advance(time.Second)
	e.mustSend(t, e.alice, "carol", "c3")
	e.now.Advance(time.Second)
	e.mustSend(t, e.bob, "carol", "bc1")

	t.Run("OK", func(t *testing.T) {
		got, err := listConversations(ctx, e.messages, e.alice)
		if err != nil {
			t.Fatalf("Conversations: %v", err)
		}
		want := []struct {
			with, last, from string
			count            int
		}{
			{"carol", "c3", "alice", 3},
			{"bob", "b2", "bob", 2},
		}
		if len(got) != len(want) {
			t.Fatalf("Conversations=%+v, want %d", got, len(want))
		}
		for i, w := range want {
			c := got[i]
			if c.With != w.with || c.Count != w.count || c.LastMessage.Body != w.last || c.LastMessage.From != w.from {
				t.Errorf("Conversations[%d]=%+v, want with %q, count %d, last %q from %q", i, c, w.with, w.count, w.last, w.from)
			}
		}
		if lm := got[1].LastMessage; lm.To != "alice" || !lm.SentAt.Equal(testEpoch.Add(3*time.Second)) {
			t.Errorf("LastMessage=%+v, want to %q at %v", lm, "alice", testEpoch.Add(3*time.Second))
		}
	})

	t.Run("OK/None", func(t *testing.T) {
		got, err := listConversations(ctx, e.messages, dave)
		if err != nil {
			t.Fatalf("Conversations: %v", err)
		}
		if got == nil || len(got) != 0 {
			t.Errorf("Conversations=%#v, want an empty, non-nil slice", got)
		}
	})

	t.Run("OK/ErasedPartnerOmitted", func(t *testing.T) {
		if err := e.users.Delete(ctx, e.bob.UserID); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		got, err := listConversations(ctx, e.messages, e.alice)
		if err != nil {
			t.Fatalf("Conversations: %v", err)
		}
		if len(got) != 1 || got[0].With != "carol" {
			t.Errorf("Conversations=%+v, want only carol", got)
		}
	})

	t.Run("ErrInternal", func(t *testing.T) {
		e := newChatEnv(t)
		e.store.setErr(errBoom)
		_, err := listConversations(ctx, e.messages, e.alice)
		wantCode(t, err, EInternal)
	})

	t.Run("OK/MarkedOmitted", func(t *testing.T) {
		e := newChatEnv(t)
		e.mustSend(t, e.alice, "bob", "hi")
		e.mustSend(t, e.alice, "carol", "hi")
		e.now.Advance(time.Second)
		insertMarker(e, e.bob.UserID, e.alice.UserID)
		for _, p := range []Principal{e.alice, e.bob} {
			got, err := listConversations(ctx, e.messages, p)
			if err != nil {
				t.Fatalf("Conversations: %v", err)
			}
			for _, c := range got {
				if c.With == "bob" || c.With == "alice" {
					t.Errorf("Conversations(%s) lists %+v, a conversation with a marker", p.Username, c)
				}
			}
		}
	})
}

func TestMessagesForUser(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	sent := e.mustSend(t, e.alice, "bob", "hi bob")
	conv := crdt.ConversationID(e.alice.UserID, e.bob.UserID)
	entries := e.store.entries(conv)
	if len(entries) != 1 {
		t.Fatalf("len(log)=%d, want 1", len(entries))
	}
	entry := entries[0]

	t.Run("OK", func(t *testing.T) {
		for _, p := range []Principal{e.alice, e.bob} {
			m, ok, err := e.messages.ForUser(ctx, p.UserID, conv, entry)
			if err != nil || !ok {
				t.Fatalf("ForUser(%s)=%v, %v, want the message", p.Username, ok, err)
			}
			if m != sent {
				t.Errorf("ForUser(%s)=%+v, want %+v", p.Username, m, sent)
			}
		}
	})

	for _, tc := range []struct {
		name, user, conv string
		entry            crdt.Entry
	}{
		{"NotAParticipant", e.carol.UserID, conv, entry},
		{"UnknownUser", "nobody", conv, entry},
		{"MalformedConversation", e.alice.UserID, e.alice.UserID, entry},
		{"MalformedEntry", e.alice.UserID, conv, crdt.Entry{ID: entry.ID, Data: []byte("junk")}},
		{"ErasureMarker", e.alice.UserID, conv, crdt.Entry{ID: entry.ID, Data: crdt.ErasureMarker(e.bob.UserID, e.alice.UserID).AppendBinary(nil)}},
	} {
		t.Run("NotShown/"+tc.name, func(t *testing.T) {
			m, ok, err := e.messages.ForUser(ctx, tc.user, tc.conv, tc.entry)
			if err != nil || ok {
				t.Errorf("ForUser=%+v, %v, %v, want not shown and no error", m, ok, err)
			}
		})
	}
}

// TestMessagesSendAfter: a sender's second message, sent through a node that holds the
// first only because it arrived from a node whose clock runs 30 s ahead, still orders after
// it. An `after` that names anything else is refused and moves nothing: no client input
// advances the clock.
func TestMessagesSendAfter(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	conv := crdt.ConversationID(e.alice.UserID, e.bob.UserID)
	fromAhead := func(from, to string, ahead time.Duration, seq uint64) crdt.EntryID {
		id := crdt.EntryID{TS: crdt.Timestamp{Wall: testEpoch.Add(ahead).UnixNano(), Node: 9}, Seq: seq}
		e.store.insert(conv, crdt.Entry{ID: id, Data: crdt.Message{From: from, To: to, Body: "earlier"}.AppendBinary(nil)})
		return id
	}
	t.Run("OK", func(t *testing.T) {
		ahead := fromAhead(e.alice.UserID, e.bob.UserID, 30*time.Second, 1)
		m, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "second", After: EntryIDString(ahead)})
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		id, err := parseEntryID(m.ID)
		if err != nil {
			t.Fatalf("parseEntryID(%q): %v", m.ID, err)
		}
		if id.Compare(ahead) <= 0 {
			t.Errorf("ID=%v, want after the previous message's %v", id, ahead)
		}
	})
	bobs := fromAhead(e.bob.UserID, e.alice.UserID, 0, 2)
	for _, tc := range []struct {
		name  string
		after crdt.EntryID
	}{
		{"ErrForgedFuture", crdt.EntryID{TS: crdt.Timestamp{Wall: testEpoch.Add(59 * time.Second).UnixNano(), Node: 9}, Seq: 7}},
		{"ErrForgedPast", crdt.EntryID{TS: crdt.Timestamp{Wall: testEpoch.Add(-time.Second).UnixNano(), Node: 9}, Seq: 8}},
		{"ErrNotTheSenders", bobs},
		{"ErrMarker", func() crdt.EntryID {
			id := crdt.EntryID{TS: crdt.Timestamp{Wall: testEpoch.UnixNano(), Node: 9}, Seq: 3}
			e.store.insert(conv, crdt.Entry{ID: id, Data: crdt.ErasureMarker(e.alice.UserID, e.bob.UserID).AppendBinary(nil)})
			return id
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.clock.Next()
			_, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "x", After: EntryIDString(tc.after)})
			wantCode(t, err, EInvalid)
			// The clock moved by no more than a logical tick: nothing was observed.
			if after := e.clock.Next(); after.Wall != before.Wall {
				t.Errorf("clock Wall went from %d to %d, want unchanged", before.Wall, after.Wall)
			}
		})
	}
	t.Run("ErrOtherConversation", func(t *testing.T) {
		m := e.mustSend(t, e.alice, "carol", "to carol")
		_, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "x", After: m.ID})
		wantCode(t, err, EInvalid)
	})
	t.Run("ErrMalformed", func(t *testing.T) {
		_, err := e.messages.Send(ctx, e.alice, Send{To: "bob", Body: "x", After: "zz"})
		wantCode(t, err, EInvalid)
	})
}

// listConversations returns every conversation of p, page by page.
func listConversations(ctx context.Context, m *Messages, p Principal) ([]Conversation, error) {
	out := []Conversation{}
	cursor := ""
	for {
		page, err := m.Conversations(ctx, p, cursor, MaxPageLimit)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Conversations...)
		if page.Next == "" {
			return out, nil
		}
		cursor = page.Next
	}
}

// TestMessagesConversationsPages: the conversations come a page at a time, newest
// first, each once, and the last page has no cursor, also when their last messages share
// a wall time. A conversation of the first page that gets a new message before the
// second moves ahead of the cursor and is not listed again. Bad limits and cursors are
// EInvalid.
func TestMessagesConversationsPages(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	var want []string // newest first
	for i := range 7 {
		name := fmt.Sprintf("friend%d", i)
		e.mustRegister(t, name, testPassword)
		_, p := e.mustLogin(t, name, testPassword)
		e.mustSend(t, p, "alice", "hi")
		if i%3 != 2 { // some conversations' last messages share a wall time
			e.now.Advance(time.Second)
		}
		want = append([]string{name}, want...)
	}
	all, err := listConversations(ctx, e.messages, e.alice)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range all {
		names = append(names, c.With)
	}
	if len(names) != len(want) {
		t.Fatalf("every page: %q, want %d conversations", names, len(want))
	}
	var paged []string
	cursor := ""
	for range len(want) {
		page, err := e.messages.Conversations(ctx, e.alice, cursor, 3)
		if err != nil {
			t.Fatalf("Conversations(after %q): %v", cursor, err)
		}
		if len(page.Conversations) > 3 {
			t.Fatalf("page of %d conversations, limit 3", len(page.Conversations))
		}
		for _, c := range page.Conversations {
			paged = append(paged, c.With)
		}
		if page.Next == "" {
			break
		}
		if len(paged) == 3 { // between the first and the second page
			e.mustSend(t, e.alice, paged[1], "moves ahead")
		}
		cursor = page.Next
	}
	if !slices.Equal(paged, names) {
		t.Errorf("pages of 3: %q, want %q (as one listing before)", paged, names)
	}
	for _, tc := range []struct {
		cursor string
		limit  int
	}{{"", -1}, {"", MaxPageLimit + 1}, {"!!", 0}, {"AAAA", 0}} {
		_, err := e.messages.Conversations(ctx, e.alice, tc.cursor, tc.limit)
		wantCode(t, err, EInvalid)
	}
}

// TestMessagesExportAllConversations: an export lists every conversation, also one that
// gets a message while the export runs, with more conversations than a page holds (a
// paged listing would leave it behind its cursor; an outside review found that).
func TestMessagesExportAllConversations(t *testing.T) {
	ctx := context.Background()
	e := newChatEnv(t)
	const n = MaxPageLimit + 1
	var oldest Principal
	for i := range n {
		name := fmt.Sprintf("fr%03d", i)
		e.mustRegister(t, name, testPassword)
		_, p := e.mustLogin(t, name, testPassword)
		if i == 0 {
			oldest = p
		}
		e.mustSend(t, p, "alice", "hi")
		e.now.Advance(time.Millisecond)
	}
	seen := map[string]bool{}
	err := e.messages.Export(ctx, e.alice, func(c Conversation) error {
		if len(seen) == 0 {
			e.mustSend(t, oldest, "alice", "while the export runs")
		}
		seen[c.With] = true
		return nil
	}, func(Message) error { return nil })
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	if len(seen) != n || !seen[oldest.Username] {
		t.Errorf("export listed %d of %d conversations (%s listed: %v)", len(seen), n, oldest.Username, seen[oldest.Username])
	}
}
