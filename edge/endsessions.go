package edge

import (
	"log/slog"
	"strings"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Ending an app's sessions (functions.Apps.EndSessions) stops them working at once on
// every node the write reaches; each node then writes to the ended sessions it holds
// (functions.Sessions.RevokeEnded), which storage then drops, so that the app gets its
// room back under the quota. endedSessionsLoop runs that when an app's record changes,
// and once at start, for each app whose end is newer than the last it handled and recent
// enough that sessions it ended may still be stored.

// appsChanged kicks the loop when a batch wrote an app's record.
func appsChanged(changes []storage.Change, kick chan<- struct{}) {
	for i := range changes {
		if strings.HasPrefix(changes[i].Key, crdt.AppPrefix) {
			select {
			case kick <- struct{}{}:
			default:
			}
			return
		}
	}
}

// endedRetry is how soon the loop tries again after a failure.
const endedRetry = time.Minute

// endedSessionsLoop is the node's goroutine that revokes the sessions apps ended; it
// returns when the node stops.
func (n *Node) endedSessionsLoop() {
	done := make(map[string]crdt.Timestamp) // app → the end handled
	retry := time.NewTimer(0)               // once at start
	defer retry.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.appsKick:
		case <-retry.C:
		}
		if err := n.revokeEnded(done); err != nil && n.ctx.Err() == nil {
			n.log.Warn("revoking ended sessions failed; trying again later", slog.Any("err", err))
			retry.Reset(endedRetry)
		}
	}
}

// revokeEnded runs RevokeEnded for every app whose end is newer than done's, and notes it.
func (n *Node) revokeEnded(done map[string]crdt.Timestamp) error {
	keys, ms, _, err := n.db.RecordsUnder(n.ctx, crdt.AppPrefix, 2*functions.MaxApps) // as Apps.List
	if err != nil {
		return err
	}
	for i, k := range keys {
		app := strings.TrimPrefix(k, crdt.AppPrefix)
		end := crdt.ReadAppSessionsEnd(app, &ms[i]).SessionsUntil
		if end.IsZero() || !done[app].Less(end) {
			continue
		}
		// Every session an end older than the longest lifetime (and the clocks' skew)
		// ended has expired, and Sweep has dropped it.
		if time.Since(end.Time()) > functions.MaxServiceTTL+n.cfg.MaxSkew+time.Hour {
			done[app] = end
			continue
		}
		flagged, err := n.sessions.RevokeEnded(n.ctx, app)
		if err != nil {
			return err
		}
		done[app] = end
		if flagged > 0 {
			n.log.Info("ended sessions dropped", "app", app, "sessions", flagged)
		}
	}
	return nil
}
