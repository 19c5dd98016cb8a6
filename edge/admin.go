package edge

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/edge/adminauth"
	"github.com/sessiond/sessiond/edge/backup"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Admin routes (/v1/admin/) serve the operator's command line tools, not users: a request
// is signed with the cluster key (package adminauth); a user's bearer token gets 403.

// adminAuth authenticates an admin request; see package adminauth.
func (n *Node) adminAuth(c *fiber.Ctx) error {
	auth := c.Get(fiber.HeaderAuthorization)
	if _, ok := bearerToken(auth); ok {
		return functions.Errorf(functions.EForbidden, "a bearer token (a session token or an API key) does not open the admin routes: they take a request signed with the cluster key (%s)", adminauth.Scheme)
	}
	// The body as sent: c.Body() would inflate a compressed one, with no bound, before
	// the request is authenticated (decodeJSON refuses compressed bodies anyway). The
	// target as sent too, the request line's byte for byte: whatever the router makes of
	// it, it makes of what was signed (reading the target in another way than the router
	// would let one signature open another route).
	err := n.admin.Verify(c.Method(), string(c.Request().Header.RequestURI()), c.Request().Body(), auth)
	switch {
	case err == nil:
		return c.Next()
	case errors.Is(err, adminauth.ErrBusy):
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(adminauth.Window.Seconds()))
		return functions.Errorf(functions.ERateLimited, "%v", err)
	}
	c.Set(fiber.HeaderWWWAuthenticate, adminauth.Scheme)
	c.Set(adminauth.HeaderIdentity, n.admin.Identity())
	return functions.Errorf(functions.EUnauthorized, "admin request refused: %v", err)
}

// backupRetry is the Retry-After of a backup refused because another one runs.
const backupRetry = 10 * time.Second

// backupStall is how long a backup's client may read nothing before the node gives up
// on it: a client that stalls would otherwise hold the read transaction, and with it the
// pages of the file as of the copy, for ever.
const backupStall = time.Minute

// backup serves GET /v1/admin/backup: a backup file (package backup) of this node's data,
// a consistent copy taken in one read transaction while writes go on, streamed as it is
// copied. One backup runs at a time: another request meanwhile gets 429 rate_limited.
// A stream that breaks off (the node stops, the client goes) lacks its trailer, so the
// client knows it is incomplete.
func (n *Node) backup(c *fiber.Ctx) error {
	if !n.backingUp.CompareAndSwap(false, true) {
		c.Set(fiber.HeaderRetryAfter, retryAfterSeconds(backupRetry.Seconds()))
		return functions.Errorf(functions.ERateLimited, "a backup of this node is already running")
	}
	// The connection serves this response only: its write deadline (backupStall) must
	// not outlive it, and Close cuts it if the backup outlasts the shutdown's bound.
	c.Context().SetConnectionClose()
	conn := c.Context().Conn()
	n.backupConn.Store(&conn)
	c.Set(fiber.HeaderContentType, "application/octet-stream")
	c.Set(fiber.HeaderCacheControl, "no-store")
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="`+n.cfg.NodeName+`.sdbackup"`)
	ctx, log := n.ctx, n.log.With("component", "backup")
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer func() {
			n.backupConn.Store(nil)
			n.backingUp.Store(false)
		}()
		start := time.Now()
		var bw *backup.Writer
		body := writerFunc(func(p []byte) (int, error) { return bw.Write(p) })
		_, err := n.db.Backup(body, func(info storage.SnapshotInfo) error {
			h := backup.Header{
				Node: n.cfg.NodeName, NodeID: info.Node.String(), Region: n.cfg.Region, Version: n.cfg.Version,
				CreatedAt: n.cfg.Now().UTC(), DataFormat: info.Format, Clock: info.Clock.String(), Size: info.Size,
				Users: info.Stats.Users, Sessions: info.Stats.Sessions, Messages: info.Stats.Messages,
			}
			var err error
			bw, err = backup.NewWriter(stallWriter{ctx: ctx, w: w, conn: conn}, h, backup.SealKey((*n.signing.clusterKeys.Load())[0]))
			log.Info("backup started", "bytes", h.Size, "users", h.Users, "sessions", h.Sessions, "messages", h.Messages)
			return err
		})
		if err == nil {
			err = bw.Close()
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil {
			log.Warn("backup ended early; the client's copy lacks its trailer", slog.Any("err", err), "after", time.Since(start))
			return
		}
		log.Info("backup sent", "duration", time.Since(start))
	})
	return nil
}

// adminRoutes adds the admin routes to app.
func (n *Node) adminRoutes(app *fiber.App) {
	admin := app.Group("/v1/admin", n.adminAuth)
	admin.Get("/backup", n.backup)
	admin.Post("/apps", n.createApp) // apps.go
	admin.Get("/apps", n.listApps)
	admin.Delete("/apps/:name", n.revokeApp)
	admin.Post("/apps/:name/rotate", n.rotateApp)
	admin.Post("/apps/:name/end-sessions", n.endAppSessions)
	admin.Put("/apps/:name/quota", n.setAppQuota)
	admin.Get("/keys", n.signingKeys)
	admin.Post("/keys/rotate", n.rotateKey)
	admin.Post("/keys/:kid/retire", n.retireKey)   // jwks.go
	admin.Delete("/members/:name", n.removeMember) // members.go
	admin.Use(func(c *fiber.Ctx) error { return fiber.NewError(fiber.StatusNotFound, "no such route") })
}

// stallWriter writes a backup stream: it fails once ctx has ended (the node stops, so
// that the read transaction never holds up closing the data file), and each write
// pushes conn's write deadline backupStall ahead, so a client that stops reading ends
// the stream.
type stallWriter struct {
	ctx  context.Context
	w    *bufio.Writer
	conn net.Conn
}

func (sw stallWriter) Write(p []byte) (int, error) {
	if err := sw.ctx.Err(); err != nil {
		return 0, err
	}
	if err := sw.conn.SetWriteDeadline(time.Now().Add(backupStall)); err != nil {
		return 0, err
	}
	return sw.w.Write(p)
}

// cutBackup closes the connection of a backup still being served, if any: Close calls
// it once the HTTP server's shutdown has given in-flight requests their time.
func (n *Node) cutBackup() {
	if c := n.backupConn.Load(); c != nil {
		_ = (*c).Close() // the stream's writes fail, and its read transaction ends
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
