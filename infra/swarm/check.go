package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// runTest deploys its own stack, runs the checks, and removes everything it made.
func runTest(ctx context.Context, o options) (err error) {
	made, err := ensureSwarm(ctx)
	if err != nil {
		return err
	}
	keyDir, err := os.MkdirTemp("", "sessiond-swarm-")
	if err != nil {
		return err
	}
	defer func() {
		cleanup := context.Background() // also after an interrupt
		if err != nil {
			saveLogs(cleanup, o.stack) // before the stack goes: what the nodes said
		}
		if o.keep {
			logf("--keep: stack %s left running on 127.0.0.1:%d (go run ./infra/swarm down --stack %s)", o.stack, o.port, o.stack)
		} else {
			logf("removing stack %s, its volumes and network", o.stack)
			if rerr := removeStack(cleanup, o.stack); rerr != nil {
				logf("cleanup: %v", rerr)
				if err == nil {
					err = rerr
				}
			}
			if made {
				leaveSwarm(cleanup)
			}
		}
		_ = os.RemoveAll(keyDir) // a temporary directory
		if err == nil {
			logf("swarm test PASS in %s", time.Since(start).Round(time.Second))
		} else {
			logf("swarm test FAIL in %s", time.Since(start).Round(time.Second))
		}
	}()
	if err := buildImages(ctx, o); err != nil {
		return err
	}
	key, err := writeKey(keyDir)
	if err != nil {
		return err
	}
	logf("deploying stack %s: 3 regions × %d tasks, load balancer on 127.0.0.1:%d", o.stack, o.replicas, o.port)
	if err := deploy(ctx, o, key, "1"); err != nil {
		return err
	}
	t := &tester{o: o, c: newClient(), lb: fmt.Sprintf("http://127.0.0.1:%d", o.port), names: nodeNames(o.replicas)}

	// 1. Every replica alive in every node's view.
	if err := waitFor(ctx, 3*time.Minute, "a ready node behind the load balancer", func() (bool, string) {
		r := t.c.do(ctx, t.lb, "GET", "/readyz", "", "", nil)
		return r.status == 200, r.describe()
	}); err != nil {
		return err
	}
	if t.admin, err = t.c.signUp(ctx, t.lb, "swarm-admin"); err != nil {
		return err
	}
	ids, err := t.allAlive(ctx, 3*time.Minute)
	if err != nil {
		return err
	}
	logf("PASS every replica alive in every node's /v1/cluster: %s", strings.Join(t.names, " "))

	// 2. Login and read through the load balancer.
	u, err := t.c.signUp(ctx, t.lb, "swarm-reader")
	if err != nil {
		return err
	}
	if r := t.c.do(ctx, t.lb, "PATCH", "/v1/sessions/current", u.token, u.bookmark, map[string]any{"data": map[string]string{"hello": "swarm"}}); r.status != 200 {
		return fmt.Errorf("%w: write through the load balancer: %s", errCheck, r.describe())
	} else {
		u.bookmark = r.bookmark
	}
	for range 2 * len(t.names) {
		r := t.c.do(ctx, t.lb, "GET", "/v1/sessions/current", u.token, u.bookmark, nil)
		data, err := sessionData(r)
		if err != nil {
			return fmt.Errorf("%w: read through the load balancer: %v", errCheck, err)
		}
		if string(data["hello"]) != `"swarm"` {
			return fmt.Errorf("%w: read on %s after the write: hello=%s, want \"swarm\"", errCheck, r.servedBy, data["hello"])
		}
	}
	logf("PASS sign-up, login, write and read-your-write through the load balancer (%d reads)", 2*len(t.names))

	// 3. A task killed and rescheduled rejoins with its data.
	if err := t.killAndReschedule(ctx, ids); err != nil {
		return err
	}

	// 4. A rolling update under a write load loses nothing.
	return t.rollingUpdate(ctx, key, ids)
}

type tester struct {
	o     options
	c     *client
	lb    string
	names []string // every node name, sorted
	admin *user
}

// allAlive waits until every node has served a /v1/cluster listing exactly t.names, all
// alive, and the views agree on each member's ID; it returns name → ID.
func (t *tester) allAlive(ctx context.Context, d time.Duration) (map[string]string, error) {
	good := map[string]map[string]string{} // node → its view: name → id
	var ids map[string]string
	err := waitFor(ctx, d, "every replica alive in every node's view", func() (bool, string) {
		var last string
		for range 2 * len(t.names) {
			r := t.c.do(ctx, t.lb, "GET", "/v1/cluster", t.admin.token, "", nil)
			var v clusterView
			if r.status != 200 || r.decode(&v) != nil {
				last = r.describe()
				continue
			}
			view := map[string]string{}
			var alive []string
			for _, m := range v.Members {
				if m.Status == "alive" {
					alive = append(alive, m.Name)
					view[m.Name] = m.ID
				}
			}
			slices.Sort(alive)
			if slices.Equal(alive, t.names) {
				good[v.Node.Name] = view
			} else {
				delete(good, v.Node.Name)
				last = fmt.Sprintf("%s sees alive: %s", v.Node.Name, strings.Join(alive, " "))
			}
		}
		if len(good) < len(t.names) {
			var missing []string
			for _, n := range t.names {
				if good[n] == nil {
					missing = append(missing, n)
				}
			}
			return false, fmt.Sprintf("no full view yet from %s (last: %s)", strings.Join(missing, " "), last)
		}
		ids = good[t.names[0]]
		for n, v := range good {
			for name, id := range v {
				if ids[name] != id {
					return false, fmt.Sprintf("%s gives %s the id %s, %s gives %s", n, name, id, t.names[0], ids[name])
				}
			}
		}
		return true, ""
	})
	return ids, err
}

// sessionData decodes a session response's data.
func sessionData(r result) (map[string]json.RawMessage, error) {
	var s struct {
		Session struct {
			Data map[string]json.RawMessage `json:"data"`
		} `json:"session"`
	}
	if r.status != 200 {
		return nil, fmt.Errorf("%s", r.describe())
	}
	if err := r.decode(&s); err != nil {
		return nil, fmt.Errorf("decode %s: %w", r.describe(), err)
	}
	return s.Session.Data, nil
}

// container returns the ID of the running container of a service's task slot.
func (t *tester) container(ctx context.Context, service string, slot int) (string, error) {
	out, err := docker(ctx, nil, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+service,
		"--filter", fmt.Sprintf("name=%s.%d.", service, slot))
	if err != nil {
		return "", err
	}
	if f := strings.Fields(out); len(f) == 1 {
		return f[0], nil
	}
	return "", fmt.Errorf("%d running containers for %s slot %d: %q", len(strings.Fields(out)), service, slot, out)
}

func (t *tester) killAndReschedule(ctx context.Context, ids map[string]string) error {
	svc := t.o.stack + "_eu"
	old, err := t.container(ctx, svc, 1)
	if err != nil {
		return err
	}
	if _, err := docker(ctx, nil, "kill", "--signal", "KILL", old); err != nil {
		return err
	}
	killed := time.Now()
	logf("killed eu-1 (container %.12s) with SIGKILL", old)
	var repl string
	if err := waitFor(ctx, 2*time.Minute, "eu-1 rescheduled", func() (bool, string) {
		c, err := t.container(ctx, svc, 1)
		if err != nil || c == old {
			return false, fmt.Sprint("no new container yet: ", err)
		}
		repl = c
		return true, ""
	}); err != nil {
		return err
	}
	after, err := t.allAlive(ctx, 2*time.Minute)
	if err != nil {
		return err
	}
	if after["eu-1"] != ids["eu-1"] {
		return fmt.Errorf("%w: eu-1 came back as node %s, want %s: it lost its data directory", errCheck, after["eu-1"], ids["eu-1"])
	}
	vol, err := docker(ctx, nil, "inspect", "-f", `{{range .Mounts}}{{if eq .Destination "/data"}}{{.Name}}{{end}}{{end}}`, repl)
	if err != nil {
		return err
	}
	if want := svc + "-1"; vol != want {
		return fmt.Errorf("%w: the new eu-1 task mounts volume %q at /data, want %q", errCheck, vol, want)
	}
	logf("PASS eu-1 rescheduled (container %.12s) and alive everywhere again after %s, as the same node (id %s, volume %s)",
		repl, time.Since(killed).Round(100*time.Millisecond), after["eu-1"], vol)
	return nil
}

// writer writes to its session's data, one key after another out of keys, each value
// the write's sequence number, and remembers the last acknowledged value of each key.
type writer struct {
	u      *user
	acked  map[string]int // key → the last acknowledged value
	ok     int
	failed map[string]int // outcome (status or error) → count
}

const writerKeys = 200 // under the 256 keys a session holds

func (w *writer) run(ctx context.Context, c *client, lb string, stop <-chan struct{}) {
	for i := 1; ; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		k := "k" + strconv.Itoa(i%writerKeys)
		r := c.do(ctx, lb, "PATCH", "/v1/sessions/current", w.u.token, w.u.bookmark, map[string]any{"data": map[string]int{k: i}})
		if r.status == 200 {
			w.acked[k] = i
			w.ok++
			w.u.bookmark = r.bookmark
			continue
		}
		outcome := strconv.Itoa(r.status)
		if r.err != nil {
			outcome = "error"
		}
		w.failed[outcome]++
		time.Sleep(50 * time.Millisecond) // not a synchronisation: a pause before retrying a failed write
	}
}

func (t *tester) rollingUpdate(ctx context.Context, key string, ids map[string]string) error {
	var ws []*writer
	for i := range 4 {
		u, err := t.c.signUp(ctx, t.lb, fmt.Sprintf("swarm-writer-%d", i))
		if err != nil {
			return err
		}
		ws = append(ws, &writer{u: u, acked: map[string]int{}, failed: map[string]int{}})
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, w := range ws {
		wg.Go(func() { w.run(ctx, t.c, t.lb, stop) })
	}
	stopWriters := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopWriters()

	before := map[string]string{} // service.slot → container
	for _, svc := range services(t.o.stack) {
		for slot := 1; slot <= t.o.replicas; slot++ {
			c, err := t.container(ctx, svc, slot)
			if err != nil {
				return err
			}
			before[fmt.Sprintf("%s.%d", svc, slot)] = c
		}
	}
	began := time.Now()
	logf("rolling update of every service (a new SESSIOND_DEPLOY_REVISION) under a write load of %d writers", len(ws))
	if err := deploy(ctx, t.o, key, "2"); err != nil {
		return err
	}
	svcs := services(t.o.stack)
	if err := waitFor(ctx, 10*time.Minute, "the rolling update", func() (bool, string) {
		var states []string
		done := true
		for _, s := range svcs {
			st, err := docker(ctx, nil, "service", "inspect", "-f", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", s)
			if err != nil {
				return false, err.Error()
			}
			states = append(states, s+"="+st)
			done = done && st == "completed"
		}
		return done, strings.Join(states, " ")
	}); err != nil {
		return err
	}
	for _, s := range svcs {
		st, _ := docker(ctx, nil, "service", "inspect", "-f", "{{.UpdateStatus.State}}", s)
		if st != "completed" {
			return fmt.Errorf("%w: %s update ended %q (rolled back?)", errCheck, s, st)
		}
	}
	for task, old := range before {
		svc, slot, _ := strings.Cut(task, ".")
		n, _ := strconv.Atoi(slot)
		c, err := t.container(ctx, svc, n)
		if err != nil {
			return err
		}
		if c == old {
			return fmt.Errorf("%w: %s still runs container %.12s: the update did not replace it", errCheck, task, c)
		}
	}
	updated := time.Since(began)
	logf("rolling update completed in %s, every one of the %d tasks replaced; the load goes on for %s", updated.Round(100*time.Millisecond), len(before), t.o.load)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(t.o.load):
	}
	stopWriters()
	ok, failed := 0, map[string]int{}
	for _, w := range ws {
		ok += w.ok
		for k, n := range w.failed {
			failed[k] += n
		}
	}
	logf("writes during the update and after: %d acknowledged, not acknowledged by outcome: %v", ok, failed)
	if ok == 0 {
		return fmt.Errorf("%w: no write was acknowledged", errCheck)
	}

	after, err := t.allAlive(ctx, 3*time.Minute)
	if err != nil {
		return err
	}
	for _, n := range t.names {
		if after[n] != ids[n] {
			return fmt.Errorf("%w: %s is node %s after the update, was %s", errCheck, n, after[n], ids[n])
		}
	}

	// Every node has every acknowledged write: each writer's session read on every node
	// without a bookmark (what the node holds), until all agree or time runs out.
	for _, w := range ws {
		seen := map[string]bool{}
		var last string
		err := waitFor(ctx, 90*time.Second, "every acknowledged write of "+w.u.name+" on every node", func() (bool, string) {
			for range 2 * len(t.names) {
				r := t.c.do(ctx, t.lb, "GET", "/v1/sessions/current", w.u.token, "", nil)
				data, err := sessionData(r)
				if err != nil {
					last = err.Error()
					continue
				}
				if missing := lost(w.acked, data); missing != "" {
					delete(seen, r.servedBy)
					last = r.servedBy + ": " + missing
					continue
				}
				seen[r.servedBy] = true
			}
			var not []string
			for _, n := range t.names {
				if !seen[n] {
					not = append(not, n)
				}
			}
			return len(not) == 0, "not yet complete on " + strings.Join(not, " ") + " (last: " + last + ")"
		})
		if err != nil {
			return fmt.Errorf("%w: %v", errCheck, err)
		}
	}
	logf("PASS rolling update under load: every one of %d acknowledged writes on all %d nodes, every node the same member as before", ok, len(t.names))
	return nil
}

// lost describes the keys whose value in data is older than their last acknowledged
// write ("" when none is).
func lost(acked map[string]int, data map[string]json.RawMessage) string {
	var out []string
	for k, v := range acked {
		got, err := strconv.Atoi(string(data[k]))
		if err != nil || got < v {
			out = append(out, fmt.Sprintf("%s=%s (acked %d)", k, data[k], v))
		}
	}
	slices.Sort(out)
	if len(out) > 3 {
		out = append(out[:3], fmt.Sprintf("… %d keys in all", len(out)))
	}
	return strings.Join(out, ", ")
}

// saveLogs writes each service's logs (every task's, with timestamps, the load balancer's
// too) to stateDir(stack)/logs, so that a failed run can be read afterwards.
func saveLogs(ctx context.Context, stack string) {
	dir := filepath.Join(stateDir(stack), "logs")
	if err := os.MkdirAll(dir, 0o750); err != nil {
		logf("saving logs: %v", err)
		return
	}
	for _, svc := range append(services(stack), stack+"_lb") {
		out, err := docker(ctx, nil, "service", "logs", "--timestamps", "--no-trunc", "--raw", svc)
		if err != nil {
			logf("saving logs of %s: %v", svc, err)
		}
		f := filepath.Join(dir, svc+".log")
		if err := os.WriteFile(f, []byte(out+"\n"), 0o600); err != nil {
			logf("saving logs: %v", err)
			return
		}
	}
	logf("the services' logs are in %s", dir)
}
