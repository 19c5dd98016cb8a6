// Command example is a small web shop that keeps its visitors' sessions in sessiond: a
// sign-in and a cart, on net/http and github.com/alexedwards/scs/v2, through the scs store
// of edge/client/scsstore. The app authenticates to sessiond with an API key made by
// `sessiond apps create` (never committed: given in EXAMPLE_API_KEY or a file).
//
//	example --listen :8090 --sessiond http://eu-1:8080,http://eu-2:8080 --api-key-file key
//	example health    # exit 0 when the app at EXAMPLE_LISTEN answers /healthz (the image's check)
//	example check-key # exit 0 when the nodes at EXAMPLE_SESSIOND take EXAMPLE_API_KEY (task example)
//
// Every flag can also be set by an environment variable (EXAMPLE_LISTEN, …). `task example`
// runs two instances in the compose deployment, one per region (infra/README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alexedwards/scs/v2"

	"github.com/sessiond/sessiond/edge/client"
	"github.com/sessiond/sessiond/edge/client/scsstore"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func env(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func run(args []string) error {
	if len(args) > 0 && args[0] == "health" {
		return health(env("EXAMPLE_LISTEN", "127.0.0.1:8090"))
	}
	if len(args) > 0 && args[0] == "check-key" {
		return checkKey(env("EXAMPLE_SESSIOND", "http://127.0.0.1:8080"), os.Getenv("EXAMPLE_API_KEY"))
	}
	fs := flag.NewFlagSet("example", flag.ContinueOnError)
	listen := fs.String("listen", env("EXAMPLE_LISTEN", "127.0.0.1:8090"), "address to serve on (EXAMPLE_LISTEN)")
	endpoints := fs.String("sessiond", env("EXAMPLE_SESSIOND", "http://127.0.0.1:8080"), "sessiond nodes, comma-separated, the nearest first (EXAMPLE_SESSIOND)")
	keyFile := fs.String("api-key-file", env("EXAMPLE_API_KEY_FILE", ""), "file holding the app's API key; else EXAMPLE_API_KEY")
	region := fs.String("region", env("EXAMPLE_REGION", "local"), "name shown on the page (EXAMPLE_REGION)")
	secure := fs.Bool("secure-cookie", env("EXAMPLE_SECURE_COOKIE", "false") == "true", "mark the session cookie Secure (serve over HTTPS) (EXAMPLE_SECURE_COOKIE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	key := os.Getenv("EXAMPLE_API_KEY")
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return err
		}
		key = strings.TrimSpace(string(b))
	}
	if key == "" {
		return errors.New("no API key: set EXAMPLE_API_KEY or --api-key-file (make one with `sessiond apps create NAME`)")
	}
	c, err := client.NewService(client.Config{Endpoints: strings.Split(*endpoints, ","), UserAgent: "sessiond-example"}, key)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("region", *region)

	sm := scs.New()
	sm.Store = scsstore.New(c)
	sm.Codec = scsstore.NewJSONCodec()
	sm.Lifetime = 24 * time.Hour
	sm.IdleTimeout = 2 * time.Hour
	sm.Cookie.Name = "shop_session"
	sm.Cookie.SameSite = http.SameSiteLaxMode // forms post same-site only: no cross-site writes
	sm.Cookie.Secure = *secure
	sm.ErrorFunc = func(w http.ResponseWriter, r *http.Request, err error) {
		log.Error("session", "err", err)
		http.Error(w, "the session store is not answering; try again", http.StatusServiceUnavailable)
	}
	shop := &Shop{sm: sm, region: *region, log: log}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           shop.Routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(), "sessiond", *endpoints)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}

// health checks the app listening at listen (its port, on the loopback address).
func health(listen string) error {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 3 * time.Second}
	resp, err := hc.Get("http://" + net.JoinHostPort("127.0.0.1", port) + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health: %s", resp.Status)
	}
	return nil
}

// checkKey reports whether the nodes take key: nil when they do, an error saying why not.
func checkKey(endpoints, key string) error {
	if key == "" {
		return errors.New("check-key: EXAMPLE_API_KEY is empty")
	}
	c, err := client.NewService(client.Config{Endpoints: strings.Split(endpoints, ","), MaxAttempts: 2}, key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.App(ctx); err != nil {
		return fmt.Errorf("check-key: %w", err)
	}
	return nil
}
