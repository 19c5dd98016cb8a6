package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/edge/client"
)

// Config is one benchmark run. Start from DefaultConfig.
type Config struct {
	Targets     []string      // node base URLs; requests go round-robin over them
	Connections int           // concurrent requests (one keep-alive connection each per target); default 32
	Duration    time.Duration // measuring time; ignored when Requests > 0; default 10s
	Requests    int64         // total requests to measure; 0: run for Duration
	Rate        float64       // total requests per second to pace to; 0: as fast as the targets answer
	Warmup      time.Duration // unmeasured load before measuring; default 0
	Mix         Mix
	Users       int           // users registered (or reused) and logged in before measuring; default 100
	UserPrefix  string        // their names are UserPrefix + number; default "bench"
	Password    string        // their password; default "bench-password"
	Timeout     time.Duration // per request; default 10s
	Progress    io.Writer     // a live progress line each second; nil: none
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	m, _ := ParseMix(DefaultMix)
	return Config{
		Connections: 32, Duration: 10 * time.Second, Mix: m, Users: 100,
		UserPrefix: "bench", Password: "bench-password", Timeout: 10 * time.Second,
	}
}

// Validate reports the first unusable setting, naming its flag.
func (c Config) Validate() error {
	switch {
	case len(c.Targets) == 0:
		return errors.New("--target: at least one node URL is required")
	case c.Connections < 1:
		return errors.New("--connections must be at least 1")
	case c.Requests < 0:
		return errors.New("--requests must not be negative")
	case c.Requests == 0 && c.Duration <= 0:
		return errors.New("--duration must be positive (or give --requests)")
	case c.Rate < 0:
		return errors.New("--rate must not be negative")
	case c.Users < 2:
		return errors.New("--users must be at least 2 (messages go from one bench user to another)")
	case c.UserPrefix == "" || len(c.UserPrefix) > 24:
		return errors.New("--user-prefix must be 1–24 characters")
	case len(c.Password) < 8:
		return errors.New("--password must be at least 8 bytes")
	}
	return nil
}

// user is a bench user; token is replaced by each login so that workers always hold the
// newest session (older ones may be revoked by the per-user session cap). Its requests,
// whichever worker makes them, share one bookmark: the user is one client of the API.
type user struct {
	name  string
	peer  string // the user it sends messages to
	token atomic.Pointer[string]
	bm    bookmark
}

// Result is a run's measurements, as --json prints them.
type Result struct {
	Targets     []string           `json:"targets"`
	Connections int                `json:"connections"`
	Mix         string             `json:"mix"`
	Users       int                `json:"users"`
	Rate        float64            `json:"rate,omitempty"`
	Elapsed     float64            `json:"elapsed_seconds"`
	Operations  map[string]OpStats `json:"operations"`
	Total       OpStats            `json:"total"`
	Errors      map[string]int64   `json:"errors"`
	Behind      int64              `json:"behind"` // measured responses that were 503 behind; errors too
	CPU         CPUStats           `json:"cpu"`
	Setup       SetupStats         `json:"setup"`
}

// OpStats are one operation's figures. Latencies are in milliseconds.
type OpStats struct {
	Requests   int64   `json:"requests"`
	Errors     int64   `json:"errors"`
	Throughput float64 `json:"throughput"` // successful requests per second
	P50        float64 `json:"p50_ms"`
	P90        float64 `json:"p90_ms"`
	P99        float64 `json:"p99_ms"`
	Max        float64 `json:"max_ms"`
	Mean       float64 `json:"mean_ms"`
}

// CPUStats is the load generator's own CPU use while measuring: user+sys CPU seconds over
// wall seconds. Near Cores × 100% the tool, not the target, was the limit.
type CPUStats struct {
	User    float64 `json:"user_seconds"`
	Sys     float64 `json:"sys_seconds"`
	Percent float64 `json:"percent"` // of one core
	Cores   int     `json:"cores"`
}

// SetupStats says what setup took. Check is the time to read every session once on
// every target (with several targets), which no wait for replication precedes.
type SetupStats struct {
	Register float64 `json:"register_seconds"`
	Login    float64 `json:"login_seconds"`
	Check    float64 `json:"check_seconds,omitempty"`
}

// workerStats are one worker's measurements, merged at the end.
type workerStats struct {
	hist   [numOps]Histogram
	errs   [numOps]int64
	reqs   [numOps]int64
	behind int64
	byKind map[string]int64
}

// Run sets up the users, then measures the mix until the duration or request count is
// reached or ctx ends (then it reports what it measured). It fails only if setup fails.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	targets := make([]*target, len(cfg.Targets))
	for i, raw := range cfg.Targets {
		t, err := newTarget(raw, cfg.Connections, cfg.Timeout)
		if err != nil {
			return nil, err
		}
		targets[i] = t
	}
	users := make([]*user, cfg.Users)
	for i := range users {
		users[i] = &user{name: cfg.UserPrefix + strconv.Itoa(i)}
	}
	for i, u := range users {
		u.peer = users[(i+1)%len(users)].name
	}
	res := &Result{Targets: cfg.Targets, Connections: cfg.Connections, Mix: cfg.Mix.String(),
		Users: cfg.Users, Rate: cfg.Rate, Errors: map[string]int64{}, Operations: map[string]OpStats{}}
	if err := setup(ctx, cfg, targets, users, &res.Setup); err != nil {
		return nil, err
	}

	if cfg.Warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, cfg.Warmup)
		w := cfg
		w.Requests, w.Progress = 0, nil
		measure(wctx, w, targets, users)
		cancel()
	}

	u0, s0 := cpuTime()
	start := time.Now()
	stats := measure(ctx, cfg, targets, users)
	elapsed := time.Since(start)
	u1, s1 := cpuTime()

	res.Elapsed = elapsed.Seconds()
	res.CPU = CPUStats{User: (u1 - u0).Seconds(), Sys: (s1 - s0).Seconds(), Cores: runtime.NumCPU()}
	res.CPU.Percent = 100 * (res.CPU.User + res.CPU.Sys) / res.Elapsed
	var all Histogram
	var total OpStats
	for op := range numOps {
		if cfg.Mix[op] == 0 {
			continue
		}
		var h Histogram
		var st OpStats
		for _, w := range stats {
			h.Merge(&w.hist[op])
			st.Requests += w.reqs[op]
			st.Errors += w.errs[op]
		}
		st.fill(&h, elapsed)
		res.Operations[op.String()] = st
		all.Merge(&h)
		total.Requests += st.Requests
		total.Errors += st.Errors
	}
	total.fill(&all, elapsed)
	res.Total = total
	for _, w := range stats {
		for k, n := range w.byKind {
			res.Errors[k] += n
		}
		res.Behind += w.behind
	}
	return res, nil
}

func (st *OpStats) fill(h *Histogram, elapsed time.Duration) {
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	st.Throughput = float64(h.Count()) / elapsed.Seconds()
	st.P50, st.P90, st.P99 = ms(h.Quantile(.5)), ms(h.Quantile(.9)), ms(h.Quantile(.99))
	st.Max, st.Mean = ms(h.Max()), ms(h.Mean())
}

// measure runs the workers and returns their stats.
func measure(ctx context.Context, cfg Config, targets []*target, users []*user) []*workerStats {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Requests == 0 {
		var c2 context.CancelFunc
		ctx, c2 = context.WithTimeout(ctx, cfg.Duration)
		defer c2()
	}
	var issued, done, failed atomic.Int64
	sched := cfg.Mix.schedule()
	stats := make([]*workerStats, cfg.Connections)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range cfg.Connections {
		st := &workerStats{byKind: map[string]int64{}}
		stats[w] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			wk := worker{cfg: cfg, id: w, targets: targets, users: users, sched: sched, st: st}
			var interval time.Duration
			if cfg.Rate > 0 {
				interval = time.Duration(float64(cfg.Connections) / cfg.Rate * float64(time.Second))
			}
			next := start.Add(interval * time.Duration(w) / time.Duration(cfg.Connections))
			for i := 0; ctx.Err() == nil; i++ {
				if cfg.Requests > 0 && issued.Add(1) > cfg.Requests {
					cancel()
					return
				}
				began := time.Now()
				if interval > 0 {
					if d := time.Until(next); d > 0 {
						select {
						case <-ctx.Done():
							return
						case <-time.After(d):
						}
					}
					began = next // latency from the intended start: no coordinated omission
					next = next.Add(interval)
				}
				if ok := wk.one(i, began); !ok {
					failed.Add(1)
				}
				done.Add(1)
			}
		}()
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	if cfg.Progress != nil {
		go func() {
			defer close(stopped)
			progress(cfg.Progress, start, &done, &failed, stop)
		}()
	} else {
		close(stopped)
	}
	wg.Wait()
	close(stop)
	<-stopped // the caller may read what progress wrote
	return stats
}

// progress prints a line a second until stop closes: elapsed, the last second's rate,
// the total and the errors.
func progress(w io.Writer, start time.Time, done, failed *atomic.Int64, stop chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	eol := "\n"
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			eol = "\r"
		}
	}
	var last int64
	for {
		select {
		case <-stop:
			if eol == "\r" {
				fmt.Fprint(w, "\n")
			}
			return
		case <-tick.C:
			n := done.Load()
			fmt.Fprintf(w, "[%4.0fs] %8d req/s  total %9d  errors %d      %s",
				time.Since(start).Seconds(), n-last, n, failed.Load(), eol)
			last = n
		}
	}
}

// worker issues one connection's requests.
type worker struct {
	cfg     Config
	id      int
	targets []*target
	users   []*user
	sched   []Op
	st      *workerStats
	c       call
	body    []byte
}

// one issues request i of this worker and records it; began is when it (should have)
// started. It reports success.
func (w *worker) one(i int, began time.Time) bool {
	op := w.sched[(w.id+i)%len(w.sched)]
	// The target advances one extra step each schedule cycle, so that no operation is
	// tied to one target when the cycle length is a multiple of the target count.
	t := w.targets[(w.id+i+i/len(w.sched))%len(w.targets)]
	u := w.users[(w.id+i*w.cfg.Connections)%len(w.users)]
	var (
		status, want int
		body         []byte
		err          error
	)
	switch op {
	case OpLogin:
		w.body = fmt.Appendf(w.body[:0], `{"username":%q,"password":%q}`, u.name, w.cfg.Password)
		status, body, err = w.c.do(t, "POST", "/v1/sessions", "", &u.bm, w.body)
		want = 201
		if err == nil && status == want {
			if tok := jsonString(body, "token"); tok != "" {
				u.token.Store(&tok)
			}
		}
	case OpRead:
		status, body, err = w.c.do(t, "GET", "/v1/sessions/current", *u.token.Load(), &u.bm, nil)
		want = 200
	case OpPatch:
		w.body = fmt.Appendf(w.body[:0], `{"data":{"k%d":{"n":%d,"w":%d}}}`, i%8, i, w.id)
		status, body, err = w.c.do(t, "PATCH", "/v1/sessions/current", *u.token.Load(), &u.bm, w.body)
		want = 200
	case OpSend:
		w.body = fmt.Appendf(w.body[:0], `{"to":%q,"body":"bench message %d from worker %d"}`, u.peer, i, w.id)
		status, body, err = w.c.do(t, "POST", "/v1/messages", *u.token.Load(), &u.bm, w.body)
		want = 201
	case OpConversation:
		status, body, err = w.c.do(t, "GET", "/v1/messages?limit=20&with="+u.peer, *u.token.Load(), &u.bm, nil)
		want = 200
	}
	lat := time.Since(began)
	w.st.reqs[op]++
	if err != nil || status != want {
		// No retry, not even of 503 behind: a retried request would be measured as one.
		w.st.errs[op]++
		w.st.byKind[op.String()+": "+errorKind(status, body, err)]++
		if err == nil && isBehind(status, body) {
			w.st.behind++
		}
		return false
	}
	w.st.hist[op].Record(lat)
	return true
}

// setup registers (or reuses) the users and logs each in, on another target than the
// one it registered on when there are several, and then reads every session once on
// every target. Each user's requests carry its bookmark, so none of this waits for
// replication: a node that has not yet got the user's writes waits for them or fetches
// them before it answers, and a 401 is an error, never lag. Setup goes through the Go
// client (package client), one per target, which heeds Retry-After on 503 (behind, or
// unavailable: a node's password-hashing queue is full while setup registers and logs in
// its users at once), setupRetries times at most.
func setup(ctx context.Context, cfg Config, targets []*target, users []*user, st *SetupStats) error {
	nodes := make([]*client.Client, len(targets))
	for i, t := range targets {
		c, err := client.New(client.Config{
			Endpoints: []string{t.base}, MaxAttempts: setupRetries + 1, AttemptTimeout: cfg.Timeout,
			Backoff: time.Second, MaxRetryWait: 5 * time.Second,
		})
		if err != nil {
			return err
		}
		nodes[i] = c
		defer c.CloseIdleConnections() // measuring uses connections of its own
		// One try, so that a wrong --target fails at once rather than after the retries.
		// Any HTTP answer will do: a baseline target (bare Fiber, Fiber+Redis) has no
		// /healthz, and it is reachability that is checked here.
		var answered *client.Error
		if _, err := c.Health(ctx); err != nil && !errors.As(err, &answered) {
			return fmt.Errorf("setup: %w", err)
		}
	}
	par := min(cfg.Connections, 16, len(users))
	each := func(what string, fn func(i int, u *user) error) (float64, error) {
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		errc := make(chan error, par)
		for range par {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= len(users) || ctx.Err() != nil {
						return
					}
					if err := fn(i, users[i]); err != nil {
						errc <- fmt.Errorf("setup: %s %s: %w", what, users[i].name, err)
						next.Store(int64(len(users)))
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errc)
		if err := <-errc; err != nil {
			return 0, err
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, "setup: %s %d users: %.1fs\n", what, len(users), time.Since(start).Seconds())
		}
		return time.Since(start).Seconds(), nil
	}
	var err error
	st.Register, err = each("register", func(i int, u *user) error {
		return u.on(nodes[i%len(nodes)], func(c *client.Client) error {
			// Sent again after a 503 unavailable: a second registration of the name is a
			// 409, which setup takes as it takes one from an earlier run (login then
			// checks the password).
			_, err := c.Do(ctx, client.Request{Method: "POST", Path: "/v1/users", NoAuth: true, Idempotent: true, Body: api.RegisterRequest{
				Username: u.name, Password: cfg.Password,
				Profile: api.Profile{FirstName: "Bench", LastName: fmt.Sprintf("User %d", i), Email: u.name + "@example.com", Address: fmt.Sprintf("%d Load Street", i)},
			}}, nil)
			if errors.Is(err, client.ErrUsernameTaken) {
				return nil
			}
			return err
		})
	})
	if err != nil {
		return err
	}
	st.Login, err = each("log in", func(i int, u *user) error {
		return u.on(nodes[(i+1)%len(nodes)], func(c *client.Client) error {
			// Sent again after a 503 unavailable: a second session is as good as the first.
			var out api.LoginResponse
			_, err := c.Do(ctx, client.Request{Method: "POST", Path: "/v1/sessions", NoAuth: true, Idempotent: true,
				Body: api.LoginRequest{Username: u.name, Password: cfg.Password}}, &out)
			if err == nil && out.Token == "" {
				err = fmt.Errorf("%w: a login without a token", errUnexpected)
			}
			if err == nil {
				u.token.Store(&out.Token)
			}
			return err
		})
	})
	if err != nil {
		return err
	}
	if len(targets) > 1 {
		st.Check, err = each("check sessions on every target of", func(i int, u *user) error {
			for _, n := range nodes {
				if err := u.on(n, func(c *client.Client) error {
					_, err := c.CurrentSession(ctx)
					return err
				}); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return err
}

// setupRetries bounds how often setup repeats a request answered 503.
const setupRetries = 10

// on runs fn with a client of node acting for u: u's token and bookmark, which takes in
// the bookmarks of fn's responses.
func (u *user) on(node *client.Client, fn func(c *client.Client) error) error {
	c := node.Fork()
	if p := u.token.Load(); p != nil {
		c.SetToken(*p)
	}
	sent := u.bm.load()
	if err := c.SetBookmark(sent); err != nil {
		return fmt.Errorf("bookmark %q: %w", sent, err)
	}
	err := fn(c)
	u.bm.update(sent, []byte(c.Bookmark()))
	return err
}

// WriteJSON writes r as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}
