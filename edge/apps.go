package edge

import (
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
)

// App credentials (functions.Apps), managed through the admin routes by `sessiond apps`:
// the operator proves the cluster key (adminauth), and the node answers from and writes to
// its own replica; the app's record reaches every other node by replication (it lives in
// crdt.ClusterPartition, which every node holds).

// createApp serves POST /v1/admin/apps {name}: 201 {app, key}, the key shown this once.
func (n *Node) createApp(c *fiber.Ctx) error {
	var req api.CreateAppRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	a, key, err := n.apps.Create(c.UserContext(), req.Name)
	if err != nil {
		return err
	}
	n.log.Info("app created", "app", a.Name)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(fiber.StatusCreated).JSON(api.CreateAppResponse{App: a, Key: key.String()})
}

// listApps serves GET /v1/admin/apps: {apps}, revoked ones included, by name.
func (n *Node) listApps(c *fiber.Ctx) error {
	as, err := n.apps.List(c.UserContext())
	if err != nil {
		return err
	}
	return c.JSON(api.AppsResponse{Apps: as})
}

// revokeApp serves DELETE /v1/admin/apps/{name}: {app} as revoked.
func (n *Node) revokeApp(c *fiber.Ctx) error {
	a, err := n.apps.Revoke(c.UserContext(), param(c, "name"))
	if err != nil {
		return err
	}
	n.log.Info("app revoked", "app", a.Name)
	return c.JSON(api.AppResponse{App: a})
}

// rotateApp serves POST /v1/admin/apps/{name}/rotate {grace_seconds}: 200 {app, key}, the
// new key shown this once; the older keys stop working after the grace.
func (n *Node) rotateApp(c *fiber.Ctx) error {
	var req api.RotateAppRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.GraceSeconds < 0 || req.GraceSeconds > int64(functions.MaxAppKeyGrace/time.Second) {
		return functions.Errorf(functions.EInvalid, "grace_seconds must be 0 to %d", int64(functions.MaxAppKeyGrace/time.Second))
	}
	a, key, err := n.apps.Rotate(c.UserContext(), param(c, "name"), time.Duration(req.GraceSeconds)*time.Second, req.EndSessions)
	if err != nil {
		return err
	}
	n.log.Info("app key rotated", "app", a.Name, "grace", time.Duration(req.GraceSeconds)*time.Second, "end_sessions", req.EndSessions)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(api.CreateAppResponse{App: a, Key: key.String()})
}

// setAppQuota serves PUT /v1/admin/apps/{name}/quota {quota_mib}: 200 {app}, with the
// app's own quota in place of --app-quota (null: the nodes' own again).
func (n *Node) setAppQuota(c *fiber.Ctx) error {
	var req api.AppQuotaRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	a, err := n.apps.SetQuota(c.UserContext(), param(c, "name"), req.QuotaMiB)
	if err != nil {
		return err
	}
	quota := "--app-quota"
	if a.QuotaMiB != nil {
		quota = strconv.FormatInt(*a.QuotaMiB, 10)
	}
	n.log.Info("app quota set", "app", a.Name, "quota_mib", quota)
	return c.JSON(api.AppResponse{App: a})
}

// endAppSessions serves POST /v1/admin/apps/{name}/end-sessions: every session of the
// app's subjects made so far stops working (functions.Apps.EndSessions).
func (n *Node) endAppSessions(c *fiber.Ctx) error {
	a, err := n.apps.EndSessions(c.UserContext(), param(c, "name"))
	if err != nil {
		return err
	}
	n.log.Info("app sessions ended", "app", a.Name)
	return c.JSON(api.AppResponse{App: a})
}
