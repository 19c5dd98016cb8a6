package edge

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// Node is one sessiond process: its replica in bbolt, its HTTP API and UI, and its place
// in the cluster. Create it with NewNode, then Start and Close it once each.
type Node struct {
	cfg Config
	log *slog.Logger

	db       *storage.DB
	app      *fiber.App
	ln       net.Listener
	metrics  *metrics
	tokens   *tokens
	broker   *broker
	users    *functions.Users
	sessions *functions.Sessions
	messages *functions.Messages
	cluster  *functions.Cluster

	loginByAccount *throttle
	loginByAddress *throttle

	ready  atomic.Bool
	ctx    context.Context // ends when the node stops; request contexts derive from it
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine Start starts

	closeOnce sync.Once
	closeErr  error
}

// NewNode returns a node for cfg after validating it. It opens nothing.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.PasswordHashes <= 0 {
		cfg.PasswordHashes = 2 * runtime.GOMAXPROCS(0)
	}
	return &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeName)}, nil
}

// Start opens the node's parts in dependency order — data directory and keys, bbolt, the
// handlers, the HTTP listener — and undoes what it opened if a later step fails. It returns
// once the node serves; the context bounds only the start-up itself.
func (n *Node) Start(ctx context.Context) (err error) {
	n.ctx, n.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			n.cancel()
			if n.db != nil {
				n.db.Close()
			}
		}
	}()
	if err := os.MkdirAll(n.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	keys := n.cfg.ClusterKeys
	if len(keys) == 0 {
		if keys, err = loadOrCreateKey(n.cfg.DataDir); err != nil {
			return err
		}
	}
	n.broker = newBroker()
	n.db, err = storage.Open(filepath.Join(n.cfg.DataDir, "sessiond.db"), storage.Options{
		Timeout:  time.Second,
		Now:      n.cfg.Now,
		MaxSkew:  n.cfg.MaxSkew,
		Logger:   n.cfg.Logger.With("component", "storage", "node", n.cfg.NodeName),
		OnCommit: n.broker.publish,
	})
	if err != nil {
		return err
	}
	n.metrics = newMetrics(n.db)
	n.tokens = newTokens(keys, n.cfg.Now)
	n.loginByAccount = newThrottle(n.cfg.LoginPerAccount, n.cfg.Now)
	n.loginByAddress = newThrottle(n.cfg.LoginPerAddress, n.cfg.Now)
	st := store{n.db}
	clock := n.db.Clock()
	passwords := functions.NewPasswords(n.cfg.PasswordHashes)
	n.users = &functions.Users{Store: st, Clock: clock, Passwords: passwords}
	n.sessions = &functions.Sessions{Store: st, Clock: clock, Passwords: passwords, TTL: n.cfg.SessionTTL, IdleTTL: n.cfg.IdleTTL}
	n.messages = &functions.Messages{Store: st}
	n.cluster = &functions.Cluster{Membership: &soloMembership{node: n}}
	n.app = n.newApp()

	n.ln, err = net.Listen("tcp", n.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", n.cfg.HTTPAddr, err)
	}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		if err := n.app.Listener(n.ln); err != nil {
			n.log.Error("http server stopped", slog.Any("err", err))
		}
	}()
	go func() {
		defer n.wg.Done()
		n.sweepLoop()
	}()
	n.ready.Store(true)
	n.log.Info("node started", "http", n.ln.Addr().String(), "region", n.cfg.Region, "id", n.db.NodeID().String())
	return nil
}

// HTTPAddr returns the address the API listens on (useful with ":0").
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

// sweepLoop removes sessions past their absolute expiry until the node stops.
func (n *Node) sweepLoop() {
	t := time.NewTicker(n.cfg.SweepEvery)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			if k, err := n.db.Sweep(n.ctx, n.cfg.Now()); err != nil {
				n.log.Warn("expiry sweep failed", slog.Any("err", err))
			} else if k > 0 {
				n.log.Debug("expired sessions removed", "count", k)
			}
		}
	}
}

// Close stops the node in reverse order: not ready, live streams ended, in-flight requests
// finished (bounded by ctx and ShutdownTimeout), background goroutines stopped, bbolt
// closed last. It is safe to call more than once, keeps going after an error and returns
// the first.
func (n *Node) Close(ctx context.Context) error {
	n.closeOnce.Do(func() {
		n.ready.Store(false)
		ctx, cancel := context.WithTimeout(ctx, n.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		if n.broker != nil {
			n.broker.closeAll()
		}
		if n.app != nil {
			if err := n.app.ShutdownWithContext(ctx); err != nil {
				errs = append(errs, fmt.Errorf("shut down http: %w", err))
			}
		}
		if n.cancel != nil {
			n.cancel()
		}
		n.wg.Wait()
		if n.db != nil {
			if err := n.db.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close storage: %w", err))
			}
		}
		if len(errs) > 0 {
			n.closeErr = errs[0]
		}
		n.log.Info("node stopped")
	})
	return n.closeErr
}

// soloMembership is the cluster of one node.
type soloMembership struct{ node *Node }

func (m *soloMembership) Self() functions.Member {
	return functions.Member{
		Name: m.node.cfg.NodeName, ID: m.node.db.NodeID().String(), Region: m.node.cfg.Region,
		Status: "alive", Addr: m.node.cfg.GossipAddr,
	}
}

func (m *soloMembership) Members() []functions.Member { return []functions.Member{m.Self()} }

