// Package crdt holds sessiond's replicated data types as pure values: the hybrid logical
// clock, the per-field map (last-writer-wins, first-writer-wins, max and monotonic-flag
// registers), the append-only message log with its stable read cursor, the anti-entropy
// digest, the record schema of users, username claims, sessions and messages (and the
// erasure markers that end a conversation) and of the service API's key-value records,
// and the versioned binary encoding of all of them.
//
// It uses the standard library only. It does no I/O, starts no goroutines and reads no
// clock of its own: time is passed in (Clock.Now). Merges are deterministic, so every
// replica that has seen the same updates holds byte-identical state.
package crdt
