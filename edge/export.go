package edge

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
)

// Limits of GET /v1/users/me/export, which reads all of an account's data: one export
// at a time per user on a node, and maxExports at once on a node.
const (
	maxExportsPerUser = 1
	maxExports        = 4
)

// exportMe streams the caller's account as one JSON document (data portability):
//
//	{"exported_at":"…","user":{user},"sessions":[session…],
//	 "conversations":[{"with":"bob","count":2,"messages":[message…]}…]}
//
// The user and sessions are read before the response starts, so their errors get their
// status; messages are read and written one page at a time while the response is sent,
// so an account of any size costs a page of memory. A failure part-way ends the
// response early: the document is then incomplete, which a JSON parser reports.
func (n *Node) exportMe(c *fiber.Ctx) error {
	p := principal(c)
	if !n.exports.take("") {
		c.Set(fiber.HeaderRetryAfter, "5")
		return functions.Errorf(functions.ERateLimited, "this node is busy with other exports; retry")
	}
	if !n.exportsPerUser.take(p.UserID) {
		n.exports.release("")
		c.Set(fiber.HeaderRetryAfter, "5")
		return functions.Errorf(functions.ERateLimited, "an export of this account is already running on this node")
	}
	release := func() {
		n.exportsPerUser.release(p.UserID)
		n.exports.release("")
	}
	head, err := n.exportHead(c, p)
	if err != nil {
		release()
		return err
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSONCharsetUTF8)
	c.Set(fiber.HeaderContentDisposition, `attachment; filename="sessiond-export-`+p.Username+`.json"`)
	// As for a backup: the connection serves this response only, and a client that stops
	// reading for backupStall ends it, so it cannot hold an export slot for ever. (A
	// forwarded export has no connection of its own here: the forwarding node relays it.)
	var conn net.Conn
	if forwardedOf(c) == nil {
		c.Context().SetConnectionClose()
		conn = c.Context().Conn()
	}
	// The request's context is reused once the handler returns: the body is written on
	// the node's, and ends when the node stops.
	ctx := n.ctx
	c.Context().SetBodyStreamWriter(func(bw *bufio.Writer) {
		defer release()
		var w io.Writer = bw
		if conn != nil {
			w = stallWriter{ctx: ctx, w: bw, conn: conn}
		}
		put := func(parts ...[]byte) error {
			for _, b := range parts {
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
			return nil
		}
		open := false       // a conversation's messages array is open
		convs, msgs := 0, 0 // written so far; msgs: in the open conversation
		err := put(head)
		if err == nil {
			err = n.messages.Export(ctx, p, func(conv functions.Conversation) error {
				var sep []byte
				if open {
					sep = append(sep, "]}"...)
				}
				if convs > 0 {
					sep = append(sep, ',')
				}
				convs, msgs, open = convs+1, 0, true
				b, err := json.Marshal(struct {
					With  string `json:"with"`
					Count int    `json:"count"`
				}{conv.With, conv.Count})
				if err != nil {
					return err
				}
				if err := put(sep, b[:len(b)-1], []byte(`,"messages":[`)); err != nil {
					return err
				}
				return bw.Flush()
			}, func(m functions.Message) error {
				b, err := json.Marshal(m)
				if err != nil {
					return err
				}
				if msgs > 0 {
					b = append([]byte{','}, b...)
				}
				msgs++
				return put(b)
			})
		}
		if err == nil && open {
			err = put([]byte("]}"))
		}
		if err == nil {
			err = put([]byte("]}\n"))
		}
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			n.log.Warn("export ended early", "user", p.UserID, "err", err)
		}
	})
	return nil
}

// exportHead returns the export's beginning, up to the opening of its conversations.
func (n *Node) exportHead(c *fiber.Ctx, p functions.Principal) ([]byte, error) {
	u, err := n.users.Me(c.UserContext(), p.UserID)
	if err != nil {
		return nil, err
	}
	sessions, err := n.sessions.List(c.UserContext(), p)
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(struct {
		ExportedAt time.Time           `json:"exported_at"`
		User       functions.User      `json:"user"`
		Sessions   []functions.Session `json:"sessions"`
	}{n.cfg.Now().UTC(), u, sessions})
	if err != nil {
		return nil, err
	}
	return append(b[:len(b)-1], `,"conversations":[`...), nil
}
