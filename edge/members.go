package edge

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// removeMember serves DELETE /v1/admin/members/{name}: an operator declares a failed
// member gone for good (cluster.Membership.Remove), 200 {name, status: "left"}. Its node
// ID is recorded removed first (recordRemoved), durably, so that it never takes part
// again with that ID. A name the node does not know is 404, a name not validly escaped
// 400; a member that is not failed (alive, suspect, left, removed, or this node), or a
// node that runs without a cluster, 409.
func (n *Node) removeMember(c *fiber.Ctx) error {
	// Fiber hands the path segment on as sent; node names may hold any character
	// (sessiond members remove escapes them).
	name, err := url.PathUnescape(param(c, "name"))
	if err != nil {
		return functions.Errorf(functions.EInvalid, "member name: %v", err)
	}
	if n.membership == nil {
		return functions.Errorf(functions.EConflict, "this node runs without a cluster: it has no members to remove")
	}
	record := func(m cluster.Member) error { return n.recordRemoved(c.Context(), m) }
	switch err := n.membership.Remove(name, record); {
	case errors.Is(err, cluster.ErrNoSuchMember):
		return functions.Errorf(functions.ENotFound, "no member %q in this node's view of the cluster", name)
	case errors.Is(err, cluster.ErrMemberNotFailed):
		return functions.Errorf(functions.EConflict, "%v: only a member this node sees failed can be removed (stop a live one, or let it leave with SIGTERM)", err)
	case err != nil:
		return err
	}
	return c.JSON(api.RemovedMember{Name: name, Status: api.MemberLeft})
}

// recordRemoved writes the cluster-wide record that marks member's node ID removed for
// good (crdt.RemovedPrefix), and returns once it is durable here; replication carries it
// to every node.
func (n *Node) recordRemoved(ctx context.Context, member cluster.Member) error {
	if member.ID == 0 {
		return fmt.Errorf("member %s has no node ID to record", member.Name)
	}
	return n.db.Update(ctx, func(tx *storage.Tx) error {
		_, err := tx.Merge(crdt.RemovedKey(member.ID), crdt.NewRemoved(member.Name, n.db.Clock().Next()))
		return err
	})
}
