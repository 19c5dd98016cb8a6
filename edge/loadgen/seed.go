package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// SeedConfig describes a data set to write into a node's data file.
type SeedConfig struct {
	Path            string        // the node's bbolt file (<data dir>/sessiond.db); created if absent
	Users           int           // users to create, each with its username claim
	SessionsPerUser int           // sessions per user
	Prefix          string        // usernames are Prefix + number; default "seed"
	Password        string        // every user's password; default "bench-password"
	SessionTTL      time.Duration // absolute session lifetime; default 24h
	IdleTTL         time.Duration // idle lifetime; default 2h
	Batch           int           // users per storage transaction; default 200
	Progress        io.Writer     // a line per 10% done; nil: none
}

// SeedResult says what Seed wrote.
type SeedResult struct {
	NodeID   string  `json:"node_id"`
	Users    int     `json:"users"`
	Sessions int     `json:"sessions"`
	Records  int     `json:"records"`    // users + claims + sessions
	Bytes    int64   `json:"data_bytes"` // the records' replication encoding (storage.Change), keys included
	Seconds  float64 `json:"seconds"`
}

// Seed writes users and sessions straight into a node's data file through storage's API,
// in large transactions, as if they had been registered and logged in on that node. The
// node must not be running (the file is locked). Every user gets the same argon2id hash
// (one hash, not one per user: the point is data volume), so bench logins work.
func Seed(ctx context.Context, cfg SeedConfig) (SeedResult, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "seed"
	}
	if cfg.Password == "" {
		cfg.Password = "bench-password"
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 24 * time.Hour
	}
	if cfg.IdleTTL <= 0 {
		cfg.IdleTTL = 2 * time.Hour
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 200
	}
	if cfg.Users < 0 || cfg.SessionsPerUser < 0 {
		return SeedResult{}, fmt.Errorf("seed: negative count")
	}
	start := time.Now()
	hash, err := functions.NewPasswords(1).Hash(ctx, cfg.Password)
	if err != nil {
		return SeedResult{}, err
	}
	db, err := storage.Open(cfg.Path, storage.Options{Timeout: time.Second})
	if err != nil {
		return SeedResult{}, err
	}
	res := SeedResult{NodeID: db.NodeID().String()}
	clock := db.Clock()
	size := func(key string, m crdt.Map) int64 {
		return int64(len(storage.Change{Key: key, Map: m}.AppendBinary(nil)))
	}
	step := max(cfg.Users/10, 1)
	for lo := 0; lo < cfg.Users; lo += cfg.Batch {
		hi := min(lo+cfg.Batch, cfg.Users)
		var bytes int64
		err := db.Update(ctx, func(tx *storage.Tx) error {
			bytes = 0
			for i := lo; i < hi; i++ {
				name := cfg.Prefix + strconv.Itoa(i)
				id := randomID()
				ts := clock.Next()
				u := crdt.NewUser(name, hash, map[string]string{
					crdt.FieldFirstName: "Seed", crdt.FieldLastName: "User " + strconv.Itoa(i),
					crdt.FieldEmail: name + "@example.com", crdt.FieldAddress: strconv.Itoa(i) + " Data Street",
				}, ts)
				c := crdt.NewClaim(id, ts)
				if _, err := tx.Merge(crdt.UserKey(id), u); err != nil {
					return err
				}
				if _, err := tx.Merge(crdt.ClaimKey(name), c); err != nil {
					return err
				}
				bytes += size(crdt.UserKey(id), u) + size(crdt.ClaimKey(name), c)
				for range cfg.SessionsPerUser {
					ts := clock.Next()
					s := crdt.NewSession(id, ts.Time().Add(cfg.SessionTTL), cfg.IdleTTL, ts)
					key := crdt.SessionKey(randomID())
					if _, err := tx.Merge(key, s); err != nil {
						return err
					}
					bytes += size(key, s)
				}
			}
			return nil
		})
		if err != nil {
			db.Close()
			return res, fmt.Errorf("seed users %d–%d: %w", lo, hi, err)
		}
		res.Users += hi - lo
		res.Sessions += (hi - lo) * cfg.SessionsPerUser
		res.Bytes += bytes
		if cfg.Progress != nil && (hi/step != lo/step || hi == cfg.Users) {
			fmt.Fprintf(cfg.Progress, "seed: %d/%d users, %d sessions, %.1fs\n", hi, cfg.Users, res.Sessions, time.Since(start).Seconds())
		}
	}
	res.Records = 2*res.Users + res.Sessions
	if err := db.Close(); err != nil {
		return res, fmt.Errorf("seed: close: %w", err)
	}
	res.Seconds = time.Since(start).Seconds()
	return res, nil
}

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
