package main

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// AbuseConfig shapes the abusive clients that run beside the honest workload. Rates are
// per abusive account (or per victim for password guesses) and kept modest: the abuse
// must show whether an attack hurts the honest users, not saturate the host.
type AbuseConfig struct {
	Abusers     int           // abusive accounts (at least 2: they message each other)
	NullEvery   time.Duration // pause between an abuser's null-delete floods
	NullKeys    int           // never-set keys one flood deletes (the API takes ≤ 256 per update)
	ForgedEvery time.Duration // pause between forged-`after` bursts (one send per node)
	ForgedAhead time.Duration // how far ahead of real time a forged id's timestamp is
	Victims     int           // honest accounts whose passwords are guessed
	GuessEvery  time.Duration // pause between wrong-password logins, per victim
	Streams     int           // streams one flood opens on one node (the cap is 8 per user per node)
	StreamHold  time.Duration // how long a flood's streams are held open
	// ClockTolerance is how far ahead of real time a fresh timestamp may be while no
	// node runs a skewed clock: the containers share the host's clock.
	ClockTolerance time.Duration
}

// maxStreamsPerUser is the server's cap on one user's concurrent streams on one node
// (docs/API.md, Limits).
const maxStreamsPerUser = 8

// abuser is an abusive account: it floods with its own session, never anyone else's.
type abuser struct {
	name, password, id string
	token              string
	xff                string // its own client address (sign-ups are limited per address)
	lastMsg            string // the id of a message it sent: the source of a forged id's node
}

// AbuseReport is what the abusive clients did and what they saw. Status maps count
// responses by HTTP status (0: no response).
type AbuseReport struct {
	Abusers           []string      `json:"abusers"`
	Victims           []string      `json:"victims"`
	NullFloods        map[int]int   `json:"null_floods"`    // PATCH /v1/sessions/current with never-set keys deleted
	NullKeysDeleted   int           `json:"null_keys_sent"` // never-set keys named in acknowledged floods
	ForgedSends       map[int]int   `json:"forged_sends"`   // POST /v1/messages with a forged `after`
	Guesses           map[int]int   `json:"guesses"`        // wrong-password logins against the victims, via the LB
	GuessAddresses    int           `json:"guess_addresses"`
	StreamOpens       map[int]int   `json:"stream_opens"`        // GET /v1/messages/stream
	StreamMaxAccepted int           `json:"stream_max_accepted"` // most one flood held at once on one node
	ClockProbes       int           `json:"clock_probes"`
	ClockSkipped      int           `json:"clock_skipped"` // while a node's clock ran ahead, or unanswered
	ClockAheadMax     time.Duration `json:"clock_ahead_max_ns"`
	ClockViolations   []string      `json:"clock_violations,omitempty"`
	HonestLogins      int           `json:"honest_logins"`
	HonestRefused     []string      `json:"honest_refused,omitempty"` // honest logins answered 429, or 401 with the right password
	// ClockNodes and ForgedNodes count the clock probes and the forged sends by the node
	// that served them (X-Served-By): whose clock was read, and whose was attacked.
	ClockNodes  map[string]int `json:"clock_nodes"`
	ForgedNodes map[string]int `json:"forged_nodes"`
}

// Abuse runs the abusive clients. Safe for concurrent use.
type Abuse struct {
	cfg     AbuseConfig
	w       *Workload
	client  *Client
	streams *http.Client // no overall timeout: a stream is held by its context
	nodes   []*Node
	run     string
	users   []*abuser
	probe   *abuser // an honest account of the abuse's own: it writes the clock probes
	// probes: for each node, such an account whose partition the node holds, so that the
	// node itself stamps the probe (with --replicas a node forwards a message of an
	// account it does not hold to a holder, whose clock the probe would read instead).
	probes  map[string]*abuser
	victims []*User

	mu  sync.Mutex
	rep AbuseReport
}

func newAbuse(cfg AbuseConfig, w *Workload, nodes []*Node, run string) *Abuse {
	return &Abuse{cfg: cfg, w: w, client: w.client, nodes: nodes, run: run,
		streams: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		rep: AbuseReport{NullFloods: map[int]int{}, ForgedSends: map[int]int{}, Guesses: map[int]int{}, StreamOpens: map[int]int{},
			ClockNodes: map[string]int{}, ForgedNodes: map[string]int{}}}
}

// Setup registers the abusive accounts and the clock prober's and signs them in through
// the load balancer, each from an address of its own; victims are the honest accounts
// whose passwords are guessed.
func (a *Abuse) Setup(ctx context.Context, victims []*User) error {
	a.victims = victims
	for _, v := range victims {
		a.rep.Victims = append(a.rep.Victims, v.Name)
	}
	for i := range a.cfg.Abusers + 1 {
		u := &abuser{name: fmt.Sprintf("bad%s%d", a.run, i), password: fmt.Sprintf("abuser-%s-%d", a.run, i),
			xff: fmt.Sprintf("192.0.2.%d", 10+i)}
		if i == a.cfg.Abusers {
			u.name = "clk" + a.run
		}
		if err := a.signUp(ctx, u); err != nil {
			return err
		}
		if i == a.cfg.Abusers {
			a.probe = u
		} else {
			a.users = append(a.users, u)
			a.rep.Abusers = append(a.rep.Abusers, u.name)
		}
	}
	return a.placeProbes(ctx)
}

// placeProbes finds, for every node, a clock-probe account whose partition the node
// holds (it answers the account's GET /v1/users/me itself), registering more such
// accounts until every node has one, at most maxObservers. Without --replicas the first
// serves for all.
func (a *Abuse) placeProbes(ctx context.Context) error {
	a.probes = map[string]*abuser{}
	accounts := []*abuser{a.probe}
	for tried := 0; ; {
		for _, u := range accounts[tried:] {
			for _, n := range a.nodes {
				if a.probes[n.Name] != nil {
					continue
				}
				if r := a.do(ctx, n.URL(), "GET", "/v1/users/me", u.token, u.xff, nil); r.Status == 200 && r.ServedBy == n.Name && r.ForwardedBy == "" {
					a.probes[n.Name] = u
				}
			}
		}
		tried = len(accounts)
		if len(a.probes) == len(a.nodes) {
			return nil
		}
		if len(accounts) == maxObservers {
			return fmt.Errorf("abuse: %d clock-probe accounts, and not every node holds one", len(accounts))
		}
		// Each from an address of its own: placing a probe on every node may take a dozen
		// sign-ups, more than one address is allowed.
		u := &abuser{name: fmt.Sprintf("clk%s%02d", a.run, len(accounts)), password: a.probe.password, xff: fmt.Sprintf("198.51.102.%d", 10+len(accounts))}
		if err := a.signUp(ctx, u); err != nil {
			return err
		}
		accounts = append(accounts, u)
	}
}

// signUp registers u and logs it in, retrying what may not have happened.
func (a *Abuse) signUp(ctx context.Context, u *abuser) error {
	lb := a.w.lb
	registered := false
	for attempt := 0; attempt < 20 && ctx.Err() == nil; attempt++ {
		if !registered {
			r := a.do(ctx, lb, "POST", "/v1/users", "", u.xff, map[string]any{"username": u.name, "password": u.password,
				"profile": map[string]string{"first_name": "Mallory"}})
			registered = r.Status == 201 || r.Status == 409
			if !registered {
				sleep(ctx, 300*time.Millisecond)
				continue
			}
		}
		r := a.do(ctx, lb, "POST", "/v1/sessions", "", u.xff, map[string]string{"username": u.name, "password": u.password})
		var body struct {
			Token   string     `json:"token"`
			Session apiSession `json:"session"`
		}
		if r.Status == 201 && r.Decode(&body) == nil && body.Token != "" {
			u.token, u.id = body.Token, body.Session.UserID
			return nil
		}
		sleep(ctx, 300*time.Millisecond)
	}
	return fmt.Errorf("abuse: could not sign up %s", u.name)
}

func (a *Abuse) do(ctx context.Context, base, method, path, token, xff string, body any) Result {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return a.client.Do(rctx, base, method, path, token, xff, body)
}

// Run starts the abusive clients and returns a function that stops them and waits.
func (a *Abuse) Run(ctx context.Context, seed uint64) func() {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i, u := range a.users {
		rng := rand.New(rand.NewPCG(seed, uint64(1000+i)))
		wg.Go(func() { a.nullFloods(ctx, rng, u) })
		wg.Go(func() { a.streamFloods(ctx, u, i) })
	}
	if len(a.users) >= 2 {
		wg.Go(func() { a.forgedBursts(ctx, a.users[0], a.users[1]) })
	}
	for i, v := range a.victims {
		rng := rand.New(rand.NewPCG(seed, uint64(2000+i)))
		wg.Go(func() { a.guesses(ctx, rng, v) })
	}
	return func() {
		cancel()
		wg.Wait()
		a.streams.CloseIdleConnections()
	}
}

// every runs f, then waits d, until ctx ends.
func every(ctx context.Context, d time.Duration, f func()) {
	for ctx.Err() == nil {
		f()
		sleep(ctx, d)
	}
}

// nullFloods: PATCH the abuser's own session deleting keys that were never set, each
// flood with fresh names, so a server that kept a tombstone per deleted name would grow
// the record (and every replication of it) without bound.
func (a *Abuse) nullFloods(ctx context.Context, rng *rand.Rand, u *abuser) {
	n := 0
	every(ctx, a.cfg.NullEvery, func() {
		data := make(map[string]any, a.cfg.NullKeys)
		for i := range a.cfg.NullKeys {
			data[fmt.Sprintf("z%d-%d", n, i)] = nil
		}
		n++
		r := a.do(ctx, a.w.pickTarget(rng, nil).URL, "PATCH", "/v1/sessions/current", u.token, u.xff, map[string]any{"data": data})
		a.mu.Lock()
		a.rep.NullFloods[r.Status]++
		if r.Status == 200 {
			a.rep.NullKeysDeleted += a.cfg.NullKeys
		}
		a.mu.Unlock()
	})
}

// forgedID returns a message id in the server's text form (hex of the 28-byte EntryID:
// wall ns, logical, node, sequence; crdt/log.go) naming real's node, with a timestamp
// ahead of now and sequence 1: a message nobody sent.
func forgedID(real string, ahead time.Duration) (string, bool) {
	b, err := hex.DecodeString(real)
	if err != nil || len(b) != 28 {
		return "", false
	}
	binary.BigEndian.PutUint64(b[0:], uint64(time.Now().Add(ahead).UnixNano()))
	binary.BigEndian.PutUint32(b[8:], 0)
	binary.BigEndian.PutUint64(b[20:], 1)
	return hex.EncodeToString(b), true
}

// forgedBursts: from time to time, u sends its partner one message on every node with an
// `after` naming a made-up message ForgedAhead in the future; then the clock prober
// writes on every node and checks that no node's clock moved.
func (a *Abuse) forgedBursts(ctx context.Context, u, to *abuser) {
	every(ctx, a.cfg.ForgedEvery, func() {
		if u.lastMsg == "" {
			r := a.do(ctx, a.w.lb, "POST", "/v1/messages", u.token, u.xff, map[string]string{"to": to.name, "body": "hello"})
			var body struct {
				Message apiMessage `json:"message"`
			}
			if r.Status != 201 || r.Decode(&body) != nil {
				return
			}
			u.lastMsg = body.Message.ID
		}
		for _, n := range a.nodes {
			id, ok := forgedID(u.lastMsg, a.cfg.ForgedAhead)
			if !ok {
				return
			}
			r := a.do(ctx, n.URL(), "POST", "/v1/messages", u.token, u.xff, map[string]string{"to": to.name, "body": "from the future", "after": id})
			a.mu.Lock()
			a.rep.ForgedSends[r.Status]++
			if r.ServedBy != "" {
				a.rep.ForgedNodes[r.ServedBy]++
			}
			a.mu.Unlock()
		}
		a.probeClocks(ctx, to)
	})
}

// probeClocks has the prober's honest account send a message straight at every node and
// compares the message's sent_at (the node's hybrid clock) with real time. While no node
// runs (or ran) a skewed clock, it must not be ahead by more than ClockTolerance.
func (a *Abuse) probeClocks(ctx context.Context, to *abuser) {
	for _, n := range a.nodes {
		if ctx.Err() != nil {
			return
		}
		invoke := time.Now()
		probe := a.probes[n.Name]
		if probe == nil {
			probe = a.probe
		}
		r := a.do(ctx, n.URL(), "POST", "/v1/messages", probe.token, probe.xff, map[string]string{"to": to.name, "body": "clock probe"})
		var body struct {
			Message apiMessage `json:"message"`
		}
		var sent time.Time
		var err error
		if r.Status == 201 {
			if err = r.Decode(&body); err == nil { // sent_at is RFC 3339, or this fails
				sent = body.Message.SentAt
			}
		}
		a.mu.Lock()
		switch {
		case r.Status != 201 || err != nil || sent.IsZero() || a.w.skewed("*", invoke) || a.w.skewed("*", r.End):
			a.rep.ClockSkipped++
		default:
			a.rep.ClockProbes++
			a.rep.ClockNodes[r.ServedBy]++
			ahead := sent.Sub(r.End)
			a.rep.ClockAheadMax = max(a.rep.ClockAheadMax, ahead)
			if ahead > a.cfg.ClockTolerance {
				a.rep.ClockViolations = append(a.rep.ClockViolations, fmt.Sprintf("%s at %s: a fresh message's sent_at %s is %s ahead of real time (tolerance %s)",
					n.Name, r.End.Format("15:04:05.000"), body.Message.SentAt.Format(time.RFC3339Nano), ahead.Round(time.Millisecond), a.cfg.ClockTolerance))
			}
		}
		a.mu.Unlock()
	}
}

// streamFloods: u opens Streams streams at once on one node (a different node each
// time), holds them for StreamHold, closes them and starts again on the next node.
func (a *Abuse) streamFloods(ctx context.Context, u *abuser, offset int) {
	i := offset
	every(ctx, time.Second, func() {
		n := a.nodes[i%len(a.nodes)]
		i++
		hold, cancel := context.WithTimeout(ctx, a.cfg.StreamHold)
		defer cancel()
		var wg sync.WaitGroup
		var mu sync.Mutex
		accepted := 0
		for range a.cfg.Streams {
			wg.Go(func() {
				status := a.openStream(hold, n.URL(), u.token, u.xff)
				mu.Lock()
				if status == 200 {
					accepted++
				}
				mu.Unlock()
				a.mu.Lock()
				a.rep.StreamOpens[status]++
				a.mu.Unlock()
			})
		}
		wg.Wait()
		if ctx.Err() == nil {
			a.mu.Lock()
			a.rep.StreamMaxAccepted = max(a.rep.StreamMaxAccepted, accepted)
			a.mu.Unlock()
		}
	})
}

// openStream opens one stream and, if it is accepted, holds it until ctx ends. It
// returns the status (0: no response).
func (a *Abuse) openStream(ctx context.Context, base, token, xff string) int {
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/v1/messages/stream", nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("X-Forwarded-For", xff)
	resp, err := a.streams.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if resp.StatusCode == 200 {
		_, _ = io.Copy(io.Discard, resp.Body) // until the hold ends (or the node goes)
	}
	return resp.StatusCode
}

// guesses: wrong-password logins against a victim, through the load balancer (which
// passes X-Forwarded-For on; the nodes trust it only from there), each from another
// address, one every GuessEvery whatever the answers' latency (up to 4 in flight): faster
// than the account-wide failure limit allows, so the account is limited while its owner
// keeps logging in.
func (a *Abuse) guesses(ctx context.Context, rng *rand.Rand, v *User) {
	entries := []string{a.w.lb, a.w.lbRR}
	tick := time.NewTicker(a.cfg.GuessEvery)
	defer tick.Stop()
	inflight := make(chan struct{}, 4)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case inflight <- struct{}{}:
		default:
			continue // the answers are slower than the pace: skip a beat
		}
		xff := fmt.Sprintf("198.18.%d.%d", rng.IntN(256), 1+rng.IntN(254))
		entry := entries[rng.IntN(2)]
		password := fmt.Sprintf("guess-%d", rng.Uint32())
		wg.Go(func() {
			defer func() { <-inflight }()
			r := a.do(ctx, entry, "POST", "/v1/sessions", "", xff, map[string]string{"username": v.Name, "password": password})
			a.mu.Lock()
			a.rep.Guesses[r.Status]++
			a.rep.GuessAddresses++
			a.mu.Unlock()
		})
	}
}

// Report returns what the abuse did, with the honest users' logins from the history:
// any refused with 429, or with 401 although the password was right, counts.
func (a *Abuse) Report(history []*Op) *AbuseReport {
	a.mu.Lock()
	rep := a.rep
	a.mu.Unlock()
	for _, op := range history {
		if op.Kind != OpLogin {
			continue
		}
		rep.HonestLogins++
		if op.Status == 429 || op.Spurious401 {
			rep.HonestRefused = append(rep.HonestRefused, fmt.Sprintf("op %d: login of %s via %s (served by %s) at %s: %d %s",
				op.ID, op.User, op.Target, op.ServedBy, op.Invoke.Format("15:04:05"), op.Status, truncate(op.Err, 80)))
		}
	}
	return &rep
}

// Checks turns the report into the run's checks; steady is the p99 of ack → visible on
// every node for writes acknowledged while no fault held, bound its limit.
func (rep *AbuseReport) Checks(cfg AbuseConfig, steady, bound time.Duration) []Check {
	sum := func(m map[int]int) int {
		t := 0
		for _, v := range m {
			t += v
		}
		return t
	}
	// The flood must have tripped the account-wide limit (429s), or it proved nothing.
	honest := Check{Name: "abuse: honest users' logins keep working under a password-guessing flood",
		OK: len(rep.HonestRefused) == 0 && rep.HonestLogins > 0 && rep.Guesses[429] > 0}
	honest.Detail = fmt.Sprintf("%d wrong-password logins against %v from %d addresses via the LB, the account-wide limit must refuse some (%s); %d honest logins, %d refused with 429 or a 401 for the right password",
		sum(rep.Guesses), rep.Victims, rep.GuessAddresses, statusCounts(rep.Guesses), rep.HonestLogins, len(rep.HonestRefused))
	if len(rep.HonestRefused) > 0 {
		honest.Detail += ": " + strings.Join(rep.HonestRefused[:min(5, len(rep.HonestRefused))], "; ")
	}
	clock := Check{Name: "abuse: a forged `after` moves no node's clock",
		OK: len(rep.ClockViolations) == 0 && rep.ClockProbes > 0}
	clock.Detail = fmt.Sprintf("%d sends naming a message %s in the future (%s), served by %s; then %d fresh messages on every node, served by %s: at most %s ahead of real time (tolerance %s), %d skipped while a node's clock ran ahead or unanswered",
		sum(rep.ForgedSends), cfg.ForgedAhead, statusCounts(rep.ForgedSends), nodeCounts(rep.ForgedNodes), rep.ClockProbes, nodeCounts(rep.ClockNodes),
		rep.ClockAheadMax.Round(time.Millisecond), cfg.ClockTolerance, rep.ClockSkipped)
	if len(rep.ClockViolations) > 0 {
		clock.Detail += ": " + strings.Join(rep.ClockViolations[:min(3, len(rep.ClockViolations))], "; ")
	}
	streams := Check{Name: fmt.Sprintf("abuse: at most %d streams per user on a node", maxStreamsPerUser),
		OK: rep.StreamMaxAccepted <= maxStreamsPerUser && rep.StreamOpens[429] > 0}
	streams.Detail = fmt.Sprintf("floods of %d streams at once on one node: %s; at most %d accepted at once",
		cfg.Streams, statusCounts(rep.StreamOpens), rep.StreamMaxAccepted)
	lag := Check{Name: "abuse: replication lag stays bounded", OK: steady <= bound}
	lag.Detail = fmt.Sprintf("with %d null-delete floods of %d never-set keys (%s) beside the honest workload, ack → visible on every node p99 %s while no fault held (bound %s)",
		sum(rep.NullFloods), cfg.NullKeys, statusCounts(rep.NullFloods), fmtDur(steady), fmtDur(bound))
	return []Check{honest, clock, streams, lag}
}

// nodeCounts renders counts by node, e.g. "eu-1×5 us-2×3".
func nodeCounts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
