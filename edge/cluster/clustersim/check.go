package clustersim

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// State returns everything db holds: replication key → canonical encoding of its
// storage.Change, as Model.Expected gives it.
func State(ctx context.Context, db *storage.DB) (map[string][]byte, error) {
	changes, _, err := db.ChangesSince(ctx, 0, 0)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(changes))
	for _, c := range changes {
		if _, dup := out[c.Key]; dup {
			return nil, fmt.Errorf("key %q listed twice by ChangesSince", c.Key)
		}
		out[c.Key] = c.AppendBinary(nil)
	}
	return out, nil
}

// rootOf returns the digest root of a state as storage computes it.
func rootOf(st map[string][]byte) uint64 {
	var d crdt.Digest
	for key, enc := range st {
		c, err := storage.DecodeChange(enc)
		if err != nil {
			panic(err)
		}
		if c.Conv != "" {
			d.Toggle(key, crdt.PairHash(key, c.Entry.AppendBinary(nil)))
		} else {
			d.Toggle(key, crdt.PairHash(key, c.Map.AppendBinary(nil)))
		}
	}
	return d.Root()
}

// diffStates describes up to max differences between two states.
func diffStates(got, want map[string][]byte, max int) []string {
	var keys []string
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		g, gok := got[k]
		w, wok := want[k]
		switch {
		case gok && wok && bytes.Equal(g, w):
			continue
		case !gok:
			out = append(out, fmt.Sprintf("missing %s (want %s)", k, Describe(w)))
		case !wok:
			out = append(out, fmt.Sprintf("unexpected %s = %s", k, Describe(g)))
		default:
			out = append(out, fmt.Sprintf("%s = %s, want %s", k, Describe(g), Describe(w)))
		}
		if len(out) == max {
			out = append(out, "…")
			break
		}
	}
	return out
}

// Describe renders the canonical encoding of a change for a failure message: an entry
// by its ID, a record by its fields. A nil enc is "nothing".
func Describe(enc []byte) string {
	if enc == nil {
		return "nothing"
	}
	c, err := storage.DecodeChange(enc)
	if err != nil {
		return "<" + err.Error() + ">"
	}
	if c.Conv != "" {
		return fmt.Sprintf("entry %v", c.Entry.ID)
	}
	var parts []string
	for _, name := range c.Map.Names() {
		f, _ := c.Map.Field(name)
		v := string(f.Value)
		if len(v) > 24 {
			v = v[:24] + "…"
		}
		if f.Deleted {
			v = "<deleted>"
		}
		parts = append(parts, fmt.Sprintf("%s=%q@%v", name, v, f.TS))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// CheckConverged waits until every node of c is alive with the same digest root, then
// asserts that every node holds exactly the state the model implies.
func (c *Cluster) CheckConverged(t testing.TB, within time.Duration) {
	t.Helper()
	ctx := context.Background()
	start := time.Now()
	WaitFor(t, within, func() (bool, string) {
		var roots []uint64
		for _, n := range c.Nodes {
			db := n.DB()
			if db == nil {
				return false, n.Name + " is down"
			}
			d := db.Digest()
			roots = append(roots, d.Root())
		}
		for _, r := range roots[1:] {
			if r != roots[0] {
				return false, fmt.Sprintf("digest roots differ: %x", roots)
			}
		}
		return true, ""
	})
	c.Logf("converged in %s (%d acknowledged writes)", time.Since(start).Round(time.Millisecond), c.Model.Count())
	want := c.Model.Expected(c.Nodes[0].Now())
	first, err := State(ctx, c.Nodes[0].DB())
	if err != nil {
		t.Fatalf("%s: read state: %v", c.Nodes[0].Name, err)
	}
	before := len(want)
	for _, bad := range c.Model.acceptDerivedMarkers(want, first) {
		t.Errorf("%s: %s", c.Nodes[0].Name, bad)
	}
	if n := len(want) - before; n > 0 {
		c.Logf("%d erasure markers left by storage beside the acknowledged writes", n)
	}
	for _, n := range c.Nodes {
		got, err := State(ctx, n.DB())
		if err != nil {
			t.Fatalf("%s: read state: %v", n.Name, err)
		}
		if d := diffStates(got, want, 12); len(d) > 0 {
			t.Errorf("%s: state differs from the acknowledged writes (%d keys, want %d):\n  %s",
				n.Name, len(got), len(want), strings.Join(d, "\n  "))
		}
		if dr, wr := n.DB().Digest(), rootOf(got); dr.Root() != wr {
			t.Errorf("%s: digest root %x does not match the stored state's %x", n.Name, dr.Root(), wr)
		}
	}
}

// CheckHandlers checks, through the handlers of every node, what users see: erased
// accounts are gone, revoked sessions stay revoked, live sessions and profiles show the
// winning writes, message logs are identical with sender order kept, and same-name
// registrations resolve to the first claim everywhere. Call it after CheckConverged; it
// writes (logins) only at its very end.
func (w *Workload) CheckHandlers(t testing.TB) {
	t.Helper()
	c := w.c
	ctx := context.Background()
	now := c.Nodes[0].Now()
	for _, n := range c.Nodes {
		api := n.API()
		sessionsOf := storedSessions(t, n.DB())
		// Accounts.
		for _, a := range w.Accounts {
			rec, _ := c.Model.Record(crdt.UserKey(a.ID))
			mu := crdt.ReadUser(a.ID, &rec)
			me, err := api.Users.Me(ctx, a.ID)
			switch {
			case a.Erased || mu.Deleted:
				if code := functions.ErrorCode(err); code != functions.ENotFound {
					t.Errorf("%s: Me(erased %s %s) = %v, want %s", n.Name, a.Username, a.ID[:8], err, functions.ENotFound)
				}
				if k := sessionsOf[a.ID]; k > 0 {
					t.Errorf("%s: erased %s still has %d sessions", n.Name, a.Username, k)
				}
				if cs, _ := n.DB().Conversations(ctx, a.ID); len(cs) > 0 {
					t.Errorf("%s: erased %s still has %d conversations", n.Name, a.Username, len(cs))
				}
			case err != nil:
				t.Errorf("%s: Me(%s) = %v", n.Name, a.Username, err)
			default:
				for _, name := range crdt.ProfileFields {
					want, _ := c.Model.LastWrite(crdt.UserKey(a.ID), name)
					if got := profileField(me.Profile, name); got != want {
						t.Errorf("%s: %s's %s = %q, want %q (the acknowledged write with the highest HLC)", n.Name, a.Username, name, got, want)
					}
				}
			}
		}
		// Sessions.
		for _, s := range w.Sessions {
			rec, ok := c.Model.Record(crdt.SessionKey(s.ID))
			urec, _ := c.Model.Record(crdt.UserKey(s.Account.ID))
			ms, mu := crdt.ReadSession(s.ID, &rec), crdt.ReadUser(s.Account.ID, &urec)
			usable := ok && ms.ActiveAt(now) && !mu.Deleted && !mu.Revokes(ms)
			if (s.Revoked || s.Account.Erased) && usable {
				t.Errorf("%s: model says session %s of %s is usable after an acknowledged revocation", n.Name, s.ID[:8], s.Account.Username)
			}
			p := functions.Principal{UserID: s.Account.ID, Username: s.Account.Username, SessionID: s.ID}
			if !usable {
				if _, err := api.Sessions.Authenticate(ctx, s.Account.ID, s.ID); functions.ErrorCode(err) != functions.EUnauthorized {
					t.Errorf("%s: Authenticate(revoked session %s of %s) = %v, want %s", n.Name, s.ID[:8], s.Account.Username, err, functions.EUnauthorized)
				}
				continue
			}
			if c.Model.lostName(s.Account) { // a live session of an account that lost its name
				if _, err := api.Sessions.Authenticate(ctx, s.Account.ID, s.ID); functions.ErrorCode(err) != functions.EUsernameConflict {
					t.Errorf("%s: Authenticate(session %s of %s, which lost its name) = %v, want %s", n.Name, s.ID[:8], s.Account.Username, err, functions.EUsernameConflict)
				}
				continue
			}
			cur, err := api.Sessions.Current(ctx, p)
			if err != nil {
				t.Errorf("%s: Current(session %s of %s) = %v", n.Name, s.ID[:8], s.Account.Username, err)
				continue
			}
			if len(cur.Data) != len(ms.Data) {
				t.Errorf("%s: session %s data has %d keys, want %d", n.Name, s.ID[:8], len(cur.Data), len(ms.Data))
			}
			for _, k := range DataKeys {
				want, ok := c.Model.LastWrite(crdt.SessionKey(s.ID), crdt.DataPrefix+k)
				if got, has := cur.Data[k]; has != ok || string(got) != want {
					t.Errorf("%s: session %s data[%q] = %s (present %v), want %s (present %v)", n.Name, s.ID[:8], k, got, has, want, ok)
				}
			}
		}
		// Message logs.
		for _, conv := range c.Model.Convs() {
			want := c.Model.Log(conv)
			got, _, err := n.DB().ReadLog(ctx, conv, nil, 0)
			if err != nil {
				t.Fatalf("%s: ReadLog(%s): %v", n.Name, conv, err)
			}
			if !sameEntries(got, want) {
				t.Errorf("%s: conversation %s has %d entries, want %d (identical, in (HLC, node, seq) order)", n.Name, conv[:8], len(got), len(want))
				continue
			}
			pos := make(map[crdt.EntryID]int, len(got))
			for i, e := range got {
				if _, dup := pos[e.ID]; dup {
					t.Errorf("%s: conversation %s lists entry %v twice", n.Name, conv[:8], e.ID)
				}
				pos[e.ID] = i
			}
			for key, ids := range w.sent {
				if key.conv == conv && len(want) > 0 && !inOrder(t, n.Name, pos, ids) {
					t.Errorf("%s: sender %s's messages through node %s out of the order sent", n.Name, key.sender[:8], key.origin)
				}
			}
			for _, ch := range w.chains {
				if ch.conv == conv && len(want) > 0 && !inOrder(t, n.Name, pos, ch.ids) {
					t.Errorf("%s: messages sent with After through several nodes out of the order sent", n.Name)
				}
			}
		}
	}
	// Username claims: the first claim among live accounts wins on every node.
	byName := map[string][]*Account{}
	for _, a := range w.Accounts {
		byName[a.Username] = append(byName[a.Username], a)
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		claims, _ := c.Model.Record(crdt.ClaimKey(name))
		var winner string
		for _, id := range crdt.Claimants(&claims) {
			if !c.Model.Erased(id) {
				winner = id
				break
			}
		}
		for _, n := range c.Nodes {
			u, err := n.API().Users.Lookup(ctx, name)
			switch {
			case winner == "" && functions.ErrorCode(err) != functions.ENotFound:
				t.Errorf("%s: Lookup(%s) = %v, %v; want not_found (every claimant erased)", n.Name, name, u.ID, err)
			case winner != "" && (err != nil || u.ID != winner):
				t.Errorf("%s: Lookup(%s) = %v, %v; want the first claim %s", n.Name, name, u.ID, err, winner[:8])
			}
		}
		live := 0
		for _, a := range byName[name] {
			if !c.Model.Erased(a.ID) {
				live++
			}
		}
		if live < 2 {
			continue
		}
		w.conflicts++
		for _, n := range c.Nodes {
			ok := 0
			for _, a := range byName[name] {
				if c.Model.Erased(a.ID) {
					continue
				}
				_, err := n.API().Sessions.Login(ctx, functions.Login{Username: name, Password: a.Password})
				switch {
				case a.ID == winner && err != nil:
					t.Errorf("%s: Login(%s) by the first claimant %s = %v", n.Name, name, a.ID[:8], err)
				case a.ID != winner && functions.ErrorCode(err) != functions.EUsernameConflict:
					t.Errorf("%s: Login(%s) by later claimant %s = %v, want %s", n.Name, name, a.ID[:8], err, functions.EUsernameConflict)
				}
				if err == nil {
					ok++
				}
			}
			if ok != 1 {
				t.Errorf("%s: %d logins to %q succeeded, want exactly 1", n.Name, ok, name)
			}
		}
	}
}

// inOrder reports whether ids appear in the log (entry → position) in this order; a
// missing acknowledged message is an error of its own.
func inOrder(t testing.TB, node string, pos map[crdt.EntryID]int, ids []crdt.EntryID) bool {
	t.Helper()
	last, ok := -1, true
	for _, id := range ids {
		i, found := pos[id]
		if !found {
			t.Errorf("%s: acknowledged message %v missing", node, id)
			continue
		}
		if i < last {
			ok = false
		}
		last = i
	}
	return ok
}

func profileField(p functions.Profile, name string) string {
	switch name {
	case crdt.FieldFirstName:
		return p.FirstName
	case crdt.FieldLastName:
		return p.LastName
	case crdt.FieldEmail:
		return p.Email
	case crdt.FieldAddress:
		return p.Address
	}
	return "?"
}

func sameEntries(a, b []crdt.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y crdt.Entry) bool { return x.ID == y.ID && bytes.Equal(x.Data, y.Data) })
}

// storedSessions counts the session records db stores, in any state, by owner.
func storedSessions(t testing.TB, db *storage.DB) map[string]int {
	t.Helper()
	changes, _, err := db.ChangesSince(context.Background(), 0, 0)
	if err != nil {
		t.Fatalf("ChangesSince: %v", err)
	}
	out := map[string]int{}
	for _, c := range changes {
		if id, ok := strings.CutPrefix(c.Key, crdt.SessionPrefix); ok && c.Conv == "" {
			out[crdt.ReadSession(id, &c.Map).UserID]++
		}
	}
	return out
}
