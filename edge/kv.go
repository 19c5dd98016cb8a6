package edge

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/cluster"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// The key-value namespace of the service routes (docs/API.md, "Key-value namespace"):
//
//	GET    /v1/service/kv/{key}   the key's value (404 when absent, expired or deleted)
//	PUT    /v1/service/kv/{key}   replace the whole value, {value, ttl}
//	PATCH  /v1/service/kv/{key}   set and delete fields, {value: {f: v, g: null}, ttl?}
//	DELETE /v1/service/kv/{key}   delete for good (204, also for an absent key)
//	GET    /v1/service/kv         the app's live keys, a page at a time
//
// A key's record lives in the partition of its hash (crdt.KeyHomes); with placement, a
// request about one key is served by a holder (serviceAt). Listing walks the partitions
// in order: this node lists those it holds, and asks one holder of each other partition,
// every partition of one holder in a single request (a forwarded list whose partitions
// parameter names them, which only the node-to-node channel may send), then merges the
// pages (functions.MergeKVPages).

// kvRoutes adds the key-value routes to the service group.
func (n *Node) kvRoutes(svc fiber.Router) {
	at := n.serviceAt(kvPartition)
	svc.Get("/kv", n.consistency, n.kvList)
	svc.Get("/kv/:key", at, n.consistency, n.kvGet)
	svc.Put("/kv/:key", at, n.consistency, n.kvPut)
	svc.Patch("/kv/:key", at, n.consistency, n.kvPatch)
	svc.Delete("/kv/:key", at, n.consistency, n.kvDelete)
}

// kvPartition is the partition of the request's key; none for an invalid key, which the
// handler refuses.
func kvPartition(c *fiber.Ctx) (int, bool) {
	app, key := serviceApp(c), kvParam(c)
	if functions.ValidKVApp(app) != nil || functions.ValidKVKey(key) != nil {
		return 0, false
	}
	return crdt.KeyHomes(crdt.KVKey(app, key)).First(), true
}

// kvRequest returns the request's app and key. (consistency notes the app in the
// request's context, so that what the request reads of the app's keys joins the
// response's bookmark: requestContext.shows.)
func kvRequest(c *fiber.Ctx) (app, key string) {
	return serviceApp(c), kvParam(c)
}

// kvParam returns the request's key: the path segment, percent-decoded (a client may
// escape ':' or '@'); one that does not decode is returned as it is, which no key is.
func kvParam(c *fiber.Ctx) string {
	raw := param(c, "key")
	if key, err := url.PathUnescape(raw); err == nil {
		return key
	}
	return raw
}

func (n *Node) kvGet(c *fiber.Ctx) error {
	app, key := kvRequest(c)
	it, err := n.kv.Get(c.UserContext(), app, key)
	if err != nil {
		return err
	}
	return c.JSON(api.KVItemResponse{Item: it})
}

// kvTTL converts a request's ttl in seconds, refusing what cannot be one.
func kvTTL(s int64) (time.Duration, error) {
	if s < 0 || s > int64(functions.MaxKVTTL/time.Second) {
		return 0, badRequest("ttl must be 1 to %d seconds", int64(functions.MaxKVTTL/time.Second))
	}
	return time.Duration(s) * time.Second, nil
}

func (n *Node) kvPut(c *fiber.Ctx) error {
	app, key := kvRequest(c)
	var req api.KVPutRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Value == nil {
		return badRequest("field \"value\" must be an object")
	}
	ttl, err := kvTTL(req.TTL)
	if err != nil {
		return err
	}
	for k, v := range req.Value {
		req.Value[k] = compactJSON(v)
	}
	it, err := n.kv.Put(c.UserContext(), app, key, functions.KVPut{Value: req.Value, TTL: ttl})
	if err != nil {
		return err
	}
	return c.JSON(api.KVItemResponse{Item: it})
}

func (n *Node) kvPatch(c *fiber.Ctx) error {
	app, key := kvRequest(c)
	var req api.KVPatchRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Value == nil && req.TTL == 0 {
		return badRequest("field \"value\" must be an object, or \"ttl\" set")
	}
	ttl, err := kvTTL(req.TTL)
	if err != nil {
		return err
	}
	patch := functions.KVPatch{Set: make(map[string]json.RawMessage, len(req.Value)), TTL: ttl}
	for k, v := range req.Value {
		if string(compactJSON(v)) == "null" {
			patch.Delete = append(patch.Delete, k)
		} else {
			patch.Set[k] = compactJSON(v)
		}
	}
	it, err := n.kv.Patch(c.UserContext(), app, key, patch)
	if err != nil {
		return err
	}
	return c.JSON(api.KVItemResponse{Item: it})
}

func (n *Node) kvDelete(c *fiber.Ctx) error {
	app, key := kvRequest(c)
	if err := n.kv.Delete(c.UserContext(), app, key); err != nil {
		return err
	}
	return c.SendStatus(fiber.StatusNoContent)
}

// kvListQuery is the page a list request asks for.
func kvListQuery(c *fiber.Ctx) (functions.KVList, error) {
	var req functions.KVList
	var err error
	if req.After, err = functions.ParseKVCursor(query(c, "after")); err != nil {
		return req, err
	}
	if s := query(c, "limit"); s != "" {
		if req.Limit, err = strconv.Atoi(s); err != nil || req.Limit <= 0 {
			return req, badRequest("limit must be a positive number")
		}
	}
	switch query(c, "values") {
	case "", "false":
	case "true":
		req.Values = true
	default:
		return req, badRequest(`values must be "true" or "false"`)
	}
	return req, nil
}

func (n *Node) kvList(c *fiber.Ctx) error {
	app, _ := kvRequest(c)
	req, err := kvListQuery(c)
	if err != nil {
		return err
	}
	var page functions.KVPage
	switch parts := query(c, "partitions"); {
	case parts != "" && forwardedOf(c) != nil: // a part of a list another node gathers
		set, err := decodePartitions(parts)
		if err != nil {
			return badRequest("partitions: %v", err)
		}
		req.Held = set.has
		page, err = n.kv.List(c.UserContext(), app, req)
		if err != nil {
			return err
		}
	case parts != "":
		return badRequest("unknown query parameter \"partitions\"")
	case n.cfg.Replicas == 0 || !n.replicator.Sharded():
		if page, err = n.kv.List(c.UserContext(), app, req); err != nil {
			return err
		}
	default:
		if page, err = n.gatherKV(c, app, req); err != nil {
			return err
		}
	}
	out := api.KVListResponse{Items: page.Items}
	if page.Next != nil {
		out.Next = page.Next.String()
	}
	return c.JSON(out)
}

// gatherKV lists a page of app's keys over the whole cluster: the partitions this node
// holds here, every other one from a holder (its region's first), each holder asked once
// for all the partitions it is asked about. A holder that does not answer is replaced by
// the next holder of its partitions; a partition no live node holds is listed from what
// this node has of it. 503 when a partition's every holder failed.
func (n *Node) gatherKV(c *fiber.Ctx, app string, req functions.KVList) (functions.KVPage, error) {
	local := make(partitionBits, crdt.Partitions/8)
	holders := make(map[int][]cluster.Peer)
	for p := req.After.Partition; p < crdt.Partitions; p++ {
		if n.replicator.HoldsPartition(p) {
			local.add(p)
		} else if hs := n.replicator.Holders(p); len(hs) == 0 {
			local.add(p) // nobody alive holds it: what was handed to this node, if anything
		} else {
			holders[p] = hs
		}
	}
	lreq := req
	lreq.Held = local.has
	page, err := n.kv.List(c.UserContext(), app, lreq)
	if err != nil {
		return functions.KVPage{}, err
	}
	pages := []functions.KVPage{page}
	failed := make(map[string]bool)
	for round := 0; len(holders) > 0; round++ {
		// Each partition goes to its first holder not failed yet.
		asks := make(map[string]*kvAsk)
		for p, hs := range holders {
			var to *cluster.Peer
			for i := range hs {
				if !failed[hs[i].Name] {
					to = &hs[i]
					break
				}
			}
			if to == nil {
				c.Set(fiber.HeaderRetryAfter, "1")
				return functions.KVPage{}, functions.Errorf(functions.EUnavailable, "no node holding part of the namespace answered; retry")
			}
			a := asks[to.Name]
			if a == nil {
				a = &kvAsk{peer: *to, parts: make(partitionBits, crdt.Partitions/8)}
				asks[to.Name] = a
			}
			a.parts.add(p)
		}
		n.askKV(c, app, req, asks)
		for name, a := range asks {
			if a.err != nil {
				var fe *functions.Error
				if errors.As(a.err, &fe) { // the holder's answer: an error of the API
					if fe.Code == functions.EBehind || fe.Code == functions.EUnavailable {
						c.Set(fiber.HeaderRetryAfter, "1")
					}
					return functions.KVPage{}, fe
				}
				n.log.Debug("listing keys from a holder failed; trying the next", "peer", name, "err", a.err)
				failed[name] = true
				continue
			}
			pages = append(pages, a.page)
			for p := range crdt.Partitions {
				if a.parts.has(p) {
					delete(holders, p)
				}
			}
		}
	}
	return functions.MergeKVPages(app, req.Limit, req.Values, pages)
}

// kvAsk is one holder's part of a gathered list: the partitions it is asked for, and its
// answer.
type kvAsk struct {
	peer  cluster.Peer
	parts partitionBits
	page  functions.KVPage
	err   error // a *functions.Error when the holder answered with one
}

// askKV asks every holder in asks for its part of the list, at once, and returns when
// all have answered or failed.
func (n *Node) askKV(c *fiber.Ctx, app string, req functions.KVList, asks map[string]*kvAsk) {
	q := url.Values{}
	q.Set("after", req.After.String())
	if req.Limit > 0 {
		q.Set("limit", strconv.Itoa(req.Limit))
	}
	if req.Values {
		q.Set("values", "true")
	}
	wrap := make(http.Header, 8)
	wrap.Set(wrapMethod, fiber.MethodGet)
	wrap.Set(wrapClient, n.clientAddr(c))
	wrap.Set(wrapBy, n.cfg.NodeName)
	wrap.Set(wrapApp, app)
	for _, h := range forwardedHeaders {
		if v := c.Get(h); v != "" {
			wrap.Set(h, v)
		}
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	shown := shownIn(c.UserContext())
	for _, a := range asks {
		qa := url.Values{"partitions": {a.parts.String()}}
		for k, v := range q {
			qa[k] = v
		}
		h := wrap.Clone()
		h.Set(wrapURI, "/v1/service/kv?"+qa.Encode())
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b crdt.Bookmark
			a.page, b, a.err = n.askHolder(a.peer, h)
			if shown != nil && !b.IsZero() {
				mu.Lock()
				shown.Merge(b)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// askHolder sends one part of a gathered list to peer and returns its page and the
// bookmark of its answer.
func (n *Node) askHolder(peer cluster.Peer, h http.Header) (functions.KVPage, crdt.Bookmark, error) {
	ctx, cancel := context.WithTimeout(n.ctx, forwardTimeout)
	defer cancel()
	resp, err := n.transport.ForwardStream(ctx, peer, h, nil)
	if err != nil {
		return functions.KVPage{}, crdt.Bookmark{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxForwardedReply+1))
	if err != nil || len(body) > maxForwardedReply {
		return functions.KVPage{}, crdt.Bookmark{}, errors.New("incomplete answer")
	}
	if err := n.refusedAsRemoved(resp.StatusCode, resp.Header.Get(wrapBy)); err != nil {
		return functions.KVPage{}, crdt.Bookmark{}, err
	}
	if resp.Header.Get(wrapBy) == "" {
		return functions.KVPage{}, crdt.Bookmark{}, errors.New("refused by the holder's channel: " + resp.Status)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.ErrorResponse
		if json.Unmarshal(body, &e) != nil || e.Error.Code == "" {
			return functions.KVPage{}, crdt.Bookmark{}, errors.New("answered " + resp.Status)
		}
		return functions.KVPage{}, crdt.Bookmark{}, &functions.Error{Code: e.Error.Code, Message: e.Error.Message}
	}
	var out api.KVListResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return functions.KVPage{}, crdt.Bookmark{}, errors.New("malformed answer")
	}
	page := functions.KVPage{Items: out.Items}
	if out.Next != "" {
		next, err := functions.ParseKVCursor(out.Next)
		if err != nil {
			return functions.KVPage{}, crdt.Bookmark{}, errors.New("malformed cursor in answer")
		}
		page.Next = &next
	}
	var b crdt.Bookmark
	if raw := resp.Header.Get(headerBookmark); raw != "" {
		_ = b.Parse(raw) // a bookmark it sent is well formed; if not, it adds nothing
	}
	return page, b, nil
}

// partitionBits is a set of partitions, one bit each.
type partitionBits []byte

func (s partitionBits) add(p int)      { s[p/8] |= 1 << (p % 8) }
func (s partitionBits) has(p int) bool { return p >= 0 && p/8 < len(s) && s[p/8]&(1<<(p%8)) != 0 }

// String returns the set as URL-safe base64 of its bits.
func (s partitionBits) String() string { return base64.RawURLEncoding.EncodeToString(s) }

func decodePartitions(s string) (partitionBits, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != crdt.Partitions/8 {
		return nil, errors.New("not a partition set")
	}
	return b, nil
}

// kvLister adapts *storage.DB to functions.KVLister, noting every record it lists in
// the bookmark of the request whose context it is given: they are the app's own.
type kvLister struct{ db *storage.DB }

var _ functions.KVLister = kvLister{}

// KVRange implements functions.KVLister.
func (l kvLister) KVRange(ctx context.Context, app string, from int, after string, held func(int) bool,
	visit func(p int, key string, m crdt.Map) bool) error {
	shown := shownIn(ctx)
	return l.db.KVRange(ctx, app, from, after, held, func(p int, key string, m crdt.Map) bool {
		if shown != nil {
			shown.AddMap(&m)
		}
		return visit(p, key, m)
	})
}
