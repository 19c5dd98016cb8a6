// Command baseline serves the two servers sessiond is compared with in BENCHMARKS.md:
//
//   - bare: a Fiber handler that answers every request with a fixed JSON body (201 for
//     POST, else 200) — the ceiling of Fiber on this machine, with no work behind it.
//     With --headers sessiond it also sends the headers sessiond's API answers carry
//     (security headers, a request id, a bookmark), set the way sessiond sets them, so
//     that a comparison can tell the cost of sending them from the cost of the work;
//   - jwtredis: what users would build instead of sessiond — Fiber, HS256 JWTs
//     (golang-jwt/v5 with the algorithm pinned and the same claim checks as sessiond:
//     exp, iat, iss, aud required, kid) and Redis as the session store, one hash per
//     session. GET /v1/sessions/current is verify + HGETALL; PATCH is verify + HSET.
//
// Both speak enough of sessiond's API (register, login, read and patch the current
// session) for `sessiond bench` to drive them unchanged.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	mrand "math/rand/v2"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/argon2"
)

func main() {
	mode := flag.String("mode", "bare", "bare or jwtredis")
	addr := flag.String("http", "127.0.0.1:8090", "listen `ADDR`")
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis `ADDR` (jwtredis)")
	pool := flag.Int("redis-pool", 128, "Redis connections at most (jwtredis)")
	headers := flag.String("headers", "none", "none, or sessiond: send the headers sessiond's API answers carry (bare)")
	flag.Parse()

	app := fiber.New(fiber.Config{DisableStartupMessage: true, BodyLimit: 1 << 20})
	switch *mode {
	case "bare":
		switch *headers {
		case "none":
		case "sessiond":
			app.Use(sessiondHeaders)
		default:
			log.Fatalf("--headers %q: want none or sessiond", *headers)
		}
		app.Use(bare)
	case "jwtredis":
		s, err := newJWTRedis(*redisAddr, *pool)
		if err != nil {
			log.Fatal(err)
		}
		s.routes(app)
	default:
		log.Fatalf("--mode %q: want bare or jwtredis", *mode)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = app.ShutdownWithTimeout(5 * time.Second)
	}()
	if err := app.Listen(*addr); err != nil {
		log.Fatal(err)
	}
}

// bareBody is shaped and sized like sessiond's answer to GET /v1/sessions/current, with a
// token so that the bench's setup (register, login) passes.
var bareBody = []byte(`{"token":"bare","session":{"id":"0f8e2b5c9d4a4e6f8a1b2c3d4e5f6a7b","user_id":"1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d","username":"bench0","created_at":"2026-01-01T00:00:00.000000000Z","last_used_at":"2026-01-01T00:00:00.000000000Z","expires_at":"2026-01-02T00:00:00.000000000Z","idle_expires_at":"2026-01-01T02:00:00.000000000Z","data":{"k0":{"n":1,"w":0}}}}`)

func bare(c *fiber.Ctx) error {
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	if c.Method() == fiber.MethodPost {
		c.Status(fiber.StatusCreated)
	}
	return c.Send(bareBody)
}

// apiHeaders are the fixed headers of sessiond's answers to /v1/ requests (edge/headers.go),
// in fasthttp's canonical form as sessiond keeps them; the node name is "bench".
var apiHeaders = [][2][]byte{
	{[]byte("X-Served-By"), []byte("bench")},
	{[]byte("X-Content-Type-Options"), []byte("nosniff")},
	{[]byte("X-Frame-Options"), []byte("DENY")},
	{[]byte("Referrer-Policy"), []byte("no-referrer")},
	{[]byte("Cross-Origin-Opener-Policy"), []byte("same-origin")},
	{[]byte("Content-Security-Policy"), []byte("default-src 'none'; frame-ancestors 'none'")},
	{[]byte("Cache-Control"), []byte("no-store")},
}

var (
	requestIDKey = []byte("X-Request-Id")
	bookmarkKey  = []byte("X-Sessiond-Bookmark")
	// bookmark is as long as the bookmark of a session read on a lone node.
	bookmark = []byte("AQF1G8xSyK81pq3u1539uqX3GAA")
)

// sessiondHeaders sets what sessiond's API answers carry besides the body: the fixed
// headers, a random request id (16 hex digits) and a bookmark.
func sessiondHeaders(c *fiber.Ctx) error {
	h := &c.Response().Header
	for _, kv := range apiHeaders {
		h.SetCanonical(kv[0], kv[1])
	}
	var id [16]byte
	r := mrand.Uint64() // #nosec G404 -- a correlation id, as sessiond's
	for i := range id {
		id[i] = "0123456789abcdef"[r>>60]
		r <<= 4
	}
	h.SetCanonical(requestIDKey, id[:])
	if err := c.Next(); err != nil {
		return err
	}
	h.SetCanonical(bookmarkKey, bookmark)
	return nil
}

// Token claims, as sessiond pins them.
const (
	issuer   = "sessiond"
	audience = "sessiond-api"
	ttl      = 24 * time.Hour
)

type claims struct {
	SessionID string `json:"sid"`
	jwt.RegisteredClaims
}

type jwtRedis struct {
	rdb    *redis.Client
	key    []byte
	kid    string
	parser *jwt.Parser
}

func newJWTRedis(addr string, pool int) (*jwtRedis, error) {
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: pool, MinIdleConns: 16})
	// Redis answers LOADING while it reads its append-only file back: wait for it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := rdb.Ping(ctx).Err()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("redis %s: %w", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	key := make([]byte, 32)
	rand.Read(key)
	sum := sha256.Sum256(key)
	return &jwtRedis{
		rdb: rdb, key: key, kid: hex.EncodeToString(sum[:8]),
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(), jwt.WithIssuedAt(),
			jwt.WithIssuer(issuer), jwt.WithAudience(audience), jwt.WithLeeway(5*time.Second),
		),
	}, nil
}

func (s *jwtRedis) routes(app *fiber.App) {
	app.Post("/v1/users", s.register)
	app.Post("/v1/sessions", s.login)
	app.Get("/v1/sessions/current", s.current)
	app.Patch("/v1/sessions/current", s.patch)
}

func apiError(c *fiber.Ctx, status int, code, msg string) error {
	return c.Status(status).JSON(fiber.Map{"error": fiber.Map{"code": code, "message": msg}})
}

func newID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// The password hash has sessiond's cost: argon2id, 19 MiB, 1 pass, 1 thread.
func hashPassword(pw string) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	k := argon2.IDKey([]byte(pw), salt, 1, 19456, 1, 32)
	return base64.RawStdEncoding.EncodeToString(salt) + "$" + base64.RawStdEncoding.EncodeToString(k)
}

func checkPassword(pw, stored string) bool {
	salt64, key64, ok := strings.Cut(stored, "$")
	if !ok {
		return false
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(salt64)
	want, err2 := base64.RawStdEncoding.DecodeString(key64)
	if err1 != nil || err2 != nil {
		return false
	}
	got := argon2.IDKey([]byte(pw), salt, 1, 19456, 1, 32)
	return subtle.ConstantTimeCompare(got, want) == 1
}

func (s *jwtRedis) register(c *fiber.Ctx) error {
	var req struct {
		Username string            `json:"username"`
		Password string            `json:"password"`
		Profile  map[string]string `json:"profile"`
	}
	if err := json.Unmarshal(c.Body(), &req); err != nil || req.Username == "" || len(req.Password) < 8 {
		return apiError(c, 400, "invalid_argument", "bad request")
	}
	id := newID()
	rec := map[string]any{"id": id, "password": hashPassword(req.Password)}
	for k, v := range req.Profile {
		rec["profile_"+k] = v
	}
	ok, err := s.rdb.HSetNX(c.UserContext(), "user:"+req.Username, "id", id).Result()
	if err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	if !ok {
		return apiError(c, 409, "username_taken", "username is taken")
	}
	if err := s.rdb.HSet(c.UserContext(), "user:"+req.Username, rec).Err(); err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	return c.Status(201).JSON(fiber.Map{"user": fiber.Map{"id": id, "username": req.Username}})
}

func (s *jwtRedis) login(c *fiber.Ctx) error {
	var req struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal(c.Body(), &req); err != nil {
		return apiError(c, 400, "invalid_argument", "bad request")
	}
	u, err := s.rdb.HGetAll(c.UserContext(), "user:"+req.Username).Result()
	if err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	if len(u) == 0 || !checkPassword(req.Password, u["password"]) {
		return apiError(c, 401, "unauthorized", "wrong username or password")
	}
	now := time.Now().UTC()
	sid := newID()
	sess := map[string]any{
		"user_id": u["id"], "username": req.Username, "created_at": now.Format(time.RFC3339Nano),
		"last_used_at": now.Format(time.RFC3339Nano), "expires_at": now.Add(ttl).Format(time.RFC3339Nano),
	}
	pipe := s.rdb.TxPipeline()
	pipe.HSet(c.UserContext(), "session:"+sid, sess)
	pipe.Expire(c.UserContext(), "session:"+sid, ttl)
	if _, err := pipe.Exec(c.UserContext()); err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims{SessionID: sid, RegisteredClaims: jwt.RegisteredClaims{
		Issuer: issuer, Subject: u["id"], Audience: jwt.ClaimStrings{audience}, ID: sid,
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)), IssuedAt: jwt.NewNumericDate(now),
	}})
	tok.Header["kid"] = s.kid
	signed, err := tok.SignedString(s.key)
	if err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	return c.Status(201).JSON(fiber.Map{"token": signed, "session": sessionJSON(sid, sess)})
}

var errBadToken = errors.New("bad token")

// verify checks the bearer token on every request, as a stateless-JWT service does.
func (s *jwtRedis) verify(c *fiber.Ctx) (string, error) {
	raw, ok := strings.CutPrefix(c.Get(fiber.HeaderAuthorization), "Bearer ")
	if !ok {
		return "", errBadToken
	}
	var cl claims
	_, err := s.parser.ParseWithClaims(raw, &cl, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != s.kid {
			return nil, errBadToken
		}
		return s.key, nil
	})
	if err != nil || cl.SessionID == "" || cl.Subject == "" || cl.ID != cl.SessionID {
		return "", errBadToken
	}
	return cl.SessionID, nil
}

func sessionJSON(sid string, h map[string]any) fiber.Map {
	data := fiber.Map{}
	out := fiber.Map{"id": sid, "data": data}
	for k, v := range h {
		if dk, ok := strings.CutPrefix(k, "d:"); ok {
			if s, ok := v.(string); ok {
				data[dk] = json.RawMessage(s)
			}
			continue
		}
		out[k] = v
	}
	return out
}

func (s *jwtRedis) current(c *fiber.Ctx) error {
	sid, err := s.verify(c)
	if err != nil {
		return apiError(c, 401, "unauthorized", "invalid or expired token")
	}
	h, err := s.rdb.HGetAll(c.UserContext(), "session:"+sid).Result()
	if err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	if len(h) == 0 {
		return apiError(c, 401, "unauthorized", "session expired or revoked")
	}
	m := make(map[string]any, len(h))
	for k, v := range h {
		m[k] = v
	}
	return c.JSON(fiber.Map{"session": sessionJSON(sid, m)})
}

func (s *jwtRedis) patch(c *fiber.Ctx) error {
	sid, err := s.verify(c)
	if err != nil {
		return apiError(c, 401, "unauthorized", "invalid or expired token")
	}
	var req struct {
		Data map[string]json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(c.Body(), &req); err != nil || len(req.Data) == 0 {
		return apiError(c, 400, "invalid_argument", "field \"data\" must be an object")
	}
	fields := make([]any, 0, 2*len(req.Data))
	for k, v := range req.Data {
		fields = append(fields, "d:"+k, string(v))
	}
	if err := s.rdb.HSet(c.UserContext(), "session:"+sid, fields...).Err(); err != nil {
		return apiError(c, 500, "internal", "internal error")
	}
	return c.JSON(fiber.Map{"session": fiber.Map{"id": sid, "updated": strconv.Itoa(len(req.Data))}})
}
