package functions

import (
	"context"
	"crypto/rand"
	"encoding/hex"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
)

// User is a user as the API shows it (package api owns the JSON shape).
type User = api.User

func userOf(u crdt.User) User {
	return User{ID: u.ID, Username: u.Username, CreatedAt: u.Created.Time(), Profile: profileOf(u.Profile)}
}

// Register is the request to create an account.
type Register struct {
	Username string
	Password string
	Profile  Profile
}

// ProfilePatch changes the profile fields that are not nil.
type ProfilePatch struct {
	FirstName, LastName, Email, Address *string
}

// Users registers accounts and reads, edits and erases them. It holds no state between
// calls and is safe for concurrent use.
type Users struct {
	Store     Store
	Clock     Clock
	Passwords *Passwords
}

// newID returns a new ID placed in partition p: its crdt.PartitionPrefix, then 116 random
// bits in hex (32 hex digits in all).
func newID(p int) string {
	b := make([]byte, 16)
	rand.Read(b)
	return crdt.PartitionPrefix(p) + hex.EncodeToString(b)[crdt.PartitionDigits:]
}

// Register creates an account. A username already held by a live account on this node is
// EUsernameTaken; a concurrent registration of the same name elsewhere is resolved when the
// replicas meet (first claim wins; see Sessions.Login).
func (s *Users) Register(ctx context.Context, req Register) (User, error) {
	if err := validUsername(req.Username); err != nil {
		return User{}, err
	}
	if err := validPassword(req.Password); err != nil {
		return User{}, err
	}
	if err := validateProfile(req.Profile); err != nil {
		return User{}, err
	}
	hash, err := s.Passwords.Hash(ctx, req.Password)
	if err != nil {
		return User{}, err
	}
	id := newID(crdt.NamePartition(req.Username)) // with the claim: see crdt.KeyHomes
	var user crdt.Map
	err = s.Store.Update(ctx, func(tx Tx) error {
		claims, _, err := tx.Record(crdt.ClaimKey(req.Username))
		if err != nil {
			return err
		}
		others := crdt.Claimants(&claims)
		for _, other := range others {
			m, ok, err := tx.Record(crdt.UserKey(other))
			if err != nil {
				return err
			}
			if !ok || !crdt.ReadUser(other, &m).Deleted {
				return Errorf(EUsernameTaken, "username %q is taken", req.Username)
			}
		}
		if len(others) >= MaxNameClaims {
			return Errorf(EUsernameTaken, "username %q was registered and erased %d times and cannot be registered again", req.Username, len(others))
		}
		ts := s.Clock.Next()
		if user, err = tx.Merge(crdt.UserKey(id), crdt.NewUser(req.Username, hash, profileFields(req.Profile), ts)); err != nil {
			return err
		}
		_, err = tx.Merge(crdt.ClaimKey(req.Username), crdt.NewClaim(id, ts))
		return err
	})
	if err != nil {
		return User{}, err
	}
	return userOf(crdt.ReadUser(id, &user)), nil
}

// liveUser returns the user id if it exists here and is not erased.
func liveUser(ctx context.Context, store Store, id string) (crdt.User, bool, error) {
	m, ok, err := store.Record(ctx, crdt.UserKey(id))
	if err != nil || !ok {
		return crdt.User{}, false, err
	}
	u := crdt.ReadUser(id, &m)
	return u, !u.Deleted, nil
}

// ownsName reports whether u owns its username: it is the first live claimant (see
// claimants). It reads nothing unless the name is contested, as nearly none is.
func ownsName(ctx context.Context, store Store, u crdt.User) (bool, error) {
	if !store.Contested(u.Username) {
		return true, nil
	}
	claims, _, err := store.Record(ctx, crdt.ClaimKey(u.Username))
	if err != nil {
		return false, err
	}
	if ids := crdt.Claimants(&claims); len(ids) == 0 || ids[0] == u.ID {
		return true, nil
	}
	us, err := claimants(ctx, store, u.Username)
	if err != nil {
		return false, err
	}
	return len(us) == 0 || us[0].ID == u.ID, nil
}

// lostNameSep separates, in the name shown for an account that lost its username to a
// concurrent registration, the name from the first lostNameID hex digits of its ID
// ("alice#5f0c1a2b"): no username contains it, so the two accounts stay distinct.
const (
	lostNameSep = "#"
	lostNameID  = 8
)

// displayName returns the name under which u is shown to others: its username, or for an
// account that lost the name, the username and the start of its ID.
func displayName(ctx context.Context, store Store, u crdt.User) (string, error) {
	own, err := ownsName(ctx, store, u)
	if err != nil || own {
		return u.Username, err
	}
	return u.Username + lostNameSep + u.ID[:min(lostNameID, len(u.ID))], nil
}

// errNameLost is what every request of an account that lost its username gets.
func errNameLost(username string) error {
	return Errorf(EUsernameConflict,
		"the username %q was registered by someone else first while the cluster was partitioned; this account can no longer sign in or act under it: register again under another name", username)
}

// claimants returns the accounts registered under username that are not erased, the
// name's owner first. A claimant whose user record has not reached this replica yet is
// included with no password hash (it can never sign in here), so the first claim wins
// even before its record arrives.
func claimants(ctx context.Context, store Store, username string) ([]crdt.User, error) {
	claims, _, err := store.Record(ctx, crdt.ClaimKey(username))
	if err != nil {
		return nil, err
	}
	var out []crdt.User
	for _, id := range crdt.Claimants(&claims) {
		m, ok, err := store.Record(ctx, crdt.UserKey(id))
		if err != nil {
			return nil, err
		}
		u := crdt.User{ID: id, Username: username}
		if ok {
			if u = crdt.ReadUser(id, &m); u.Deleted {
				continue
			}
		}
		out = append(out, u)
	}
	return out, nil
}

// Lookup returns the live account that owns username, or ENotFound.
func (s *Users) Lookup(ctx context.Context, username string) (User, error) {
	us, err := claimants(ctx, s.Store, username)
	if err != nil {
		return User{}, err
	}
	if len(us) == 0 {
		return User{}, Errorf(ENotFound, "no user %q", username)
	}
	return userOf(us[0]), nil
}

// Me returns the caller's account.
func (s *Users) Me(ctx context.Context, userID string) (User, error) {
	u, ok, err := liveUser(ctx, s.Store, userID)
	if err != nil {
		return User{}, err
	}
	if !ok {
		return User{}, Errorf(ENotFound, "no such user")
	}
	return userOf(u), nil
}

// UpdateProfile changes the caller's profile fields named in patch, each a
// last-writer-wins register of its own, so concurrent edits of different fields both
// survive.
func (s *Users) UpdateProfile(ctx context.Context, userID string, patch ProfilePatch) (User, error) {
	check := Profile{}
	if patch.FirstName != nil {
		check.FirstName = *patch.FirstName
	}
	if patch.LastName != nil {
		check.LastName = *patch.LastName
	}
	if patch.Email != nil {
		check.Email = *patch.Email
	}
	if patch.Address != nil {
		check.Address = *patch.Address
	}
	if err := validateProfile(check); err != nil {
		return User{}, err
	}
	var merged crdt.Map
	err := s.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.UserKey(userID))
		if err != nil {
			return err
		}
		if !ok || crdt.ReadUser(userID, &m).Deleted {
			return Errorf(ENotFound, "no such user")
		}
		// Stamped here, on the committer: a node's writes must be stamped in commit
		// order (storage.DB.Committed).
		ts := s.Clock.Next()
		var update crdt.Map
		for name, v := range map[string]*string{
			crdt.FieldFirstName: patch.FirstName, crdt.FieldLastName: patch.LastName,
			crdt.FieldEmail: patch.Email, crdt.FieldAddress: patch.Address,
		} {
			if v != nil {
				update.Set(name, []byte(*v), ts)
			}
		}
		merged, err = tx.Merge(crdt.UserKey(userID), update)
		return err
	})
	if err != nil {
		return User{}, err
	}
	return userOf(crdt.ReadUser(userID, &merged)), nil
}

// Delete erases the caller's account: a monotonic deleted flag and tombstones over the
// profile and password, and in the same write an erasure marker (crdt.ErasureMarker) in
// each of the user's conversations held here. Every replica that learns of it removes
// the user's sessions and conversations and refuses them from then on; the markers reach
// the replicas that hold a conversation but not the user's record (the other
// participant's partition), which remove it too.
func (s *Users) Delete(ctx context.Context, userID string) error {
	// Read before the write (a transaction cannot list conversations). One that starts
	// in between gets its marker from the store, which leaves one in every conversation
	// whose messages an erasure deletes or drops and that has none.
	convs, err := s.Store.Conversations(ctx, userID)
	if err != nil {
		return err
	}
	return s.Store.Update(ctx, func(tx Tx) error {
		m, ok, err := tx.Record(crdt.UserKey(userID))
		if err != nil {
			return err
		}
		if !ok || crdt.ReadUser(userID, &m).Deleted {
			return Errorf(ENotFound, "no such user")
		}
		for _, c := range convs {
			if _, err := tx.Append(c.ID, crdt.ErasureMarker(userID, c.With)); err != nil {
				return err
			}
		}
		_, err = tx.Merge(crdt.UserKey(userID), crdt.EraseUser(s.Clock.Next()))
		return err
	})
}
