package edge

import (
	"context"

	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// store adapts *storage.DB to functions.Store. Only the transaction callback and the
// conversation summary differ in type; everything else passes straight through.
type store struct{ *storage.DB }

var _ functions.Store = store{}

// Update implements functions.Store.
func (s store) Update(ctx context.Context, fn func(tx functions.Tx) error) error {
	return s.DB.Update(ctx, func(tx *storage.Tx) error { return fn(tx) })
}

// Conversations implements functions.Store.
func (s store) Conversations(ctx context.Context, userID string) ([]functions.ConversationInfo, error) {
	cs, err := s.DB.Conversations(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]functions.ConversationInfo, len(cs))
	for i, c := range cs {
		out[i] = functions.ConversationInfo{ID: c.ID, With: c.With, Last: c.Last, Count: c.Count}
	}
	return out, nil
}
