package storage

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"github.com/sessiond/sessiond/crdt"
	bolt "go.etcd.io/bbolt"
)

// ReadLog returns, in log order, up to limit stable entries of conv that the cursor after
// has not yet returned, and the cursor to pass next time; limit ≤ 0 means no limit. It
// keeps crdt.Log.Read's contract: an entry is returned only once every earlier entry of
// its origin is here, so an entry that arrives late is still returned by a later call. It
// starts reading at the earliest entry the cursor has not seen (found through the
// per-origin index), so a recent cursor costs only the entries after it. An unknown
// conversation reads as empty, and so does one that holds an erasure marker (it is gone;
// it holds nothing else). The entries and cursor are the caller's; after is not modified.
func (db *DB) ReadLog(ctx context.Context, conv string, after crdt.Cursor, limit int) ([]crdt.Entry, crdt.Cursor, error) {
	next := after.Clone()
	var out []crdt.Entry
	err := db.view(ctx, func(btx *bolt.Tx) error {
		st, ok, err := loadConv(btx.Bucket(bucketConvs), conv)
		if err != nil || !ok {
			return err
		}
		prefix := convPrefix(conv)
		if v := btx.Bucket(bucketLog).Get(st.last.AppendBinary(slices.Clip(prefix))); len(v) > seqLen && crdt.IsErasureMarker(v[seqLen:]) {
			return nil
		}
		logSeq := btx.Bucket(bucketLogSeq)
		stable := make(map[crdt.NodeID]uint64, len(st.origins))
		var (
			remaining uint64 // stable entries not yet seen
			start     crdt.EntryID
			found     bool
		)
		for _, o := range st.origins {
			stable[o.node] = o.prefix
			seen := after[o.node]
			if o.prefix <= seen {
				continue
			}
			remaining += o.prefix - seen
			v := logSeq.Get(seqKey(prefix, o.node, seen+1))
			ts, err := crdt.DecodeTimestamp(v)
			if err != nil {
				return fmt.Errorf("conversation %q: entry %d of %s missing from its index", conv, seen+1, o.node)
			}
			if id := (crdt.EntryID{TS: ts, Seq: seen + 1}); !found || id.Compare(start) < 0 {
				start, found = id, true
			}
		}
		if remaining == 0 {
			return nil
		}
		c := btx.Bucket(bucketLog).Cursor()
		for k, v := c.Seek(start.AppendBinary(slices.Clip(prefix))); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			e, err := decodeStoredEntry(prefix, k, v)
			if err != nil {
				return err
			}
			o, seq := e.ID.Origin(), e.ID.Seq
			if seq <= after[o] || seq > stable[o] {
				continue
			}
			out = append(out, e)
			next[o] = max(next[o], seq)
			remaining--
			if remaining == 0 || (limit > 0 && len(out) == limit) {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, after.Clone(), err
	}
	return out, next, nil
}

// Conversation summarises one of a user's conversations.
type Conversation struct {
	ID    string     // the conversation, crdt.ConversationID of its participants
	With  string     // the other participant's user ID
	Last  crdt.Entry // the entry that orders last among those held here
	Count int        // entries held here
}

// Conversations returns userID's conversations held here, newest (by last entry) first,
// read from the user's conversation index, which lists no conversation that holds an
// erasure marker. The slice is the caller's.
func (db *DB) Conversations(ctx context.Context, userID string) ([]Conversation, error) {
	var out []Conversation
	err := db.view(ctx, func(btx *bolt.Tx) error {
		if !validID(userID) {
			return nil
		}
		convs, log := btx.Bucket(bucketConvs), btx.Bucket(bucketLog)
		prefix := append([]byte(userID), 0)
		c := btx.Bucket(bucketUserConvs).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			conv := string(k[len(prefix):])
			st, ok, err := loadConv(convs, conv)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			cp := convPrefix(conv)
			lk := st.last.AppendBinary(slices.Clip(cp))
			last, err := decodeStoredEntry(cp, lk, log.Get(lk))
			if err != nil {
				return fmt.Errorf("conversation %q: last entry: %w", conv, err)
			}
			if crdt.IsErasureMarker(last.Data) {
				continue // not listed in user_convs; never shown
			}
			a, b, _ := crdt.Participants(conv)
			with := a
			if a == userID {
				with = b
			}
			out = append(out, Conversation{ID: conv, With: with, Last: last, Count: int(st.count)})
		}
		return nil
	})
	slices.SortFunc(out, func(x, y Conversation) int {
		if c := y.Last.ID.Compare(x.Last.ID); c != 0 {
			return c
		}
		return bytes.Compare([]byte(x.ID), []byte(y.ID))
	})
	return out, err
}
