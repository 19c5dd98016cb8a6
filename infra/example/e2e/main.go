// Command e2e tests the example shop in the Docker deployment (`task example:test`; CI runs
// it after the chaos suite). On its own copy of infra/compose.yml (project
// sessiond-example-e2e, its own subnets, ports, cluster key and image tags, so it runs
// beside `task up` and the chaos suite), it starts the six nodes, makes an app key with
// `sessiond apps create`, starts the shop's eu and us instances (each on its own region's
// nodes), and plays a visitor who signs in and fills a cart, going back and forth between
// the regions, each instance showing at once what the other wrote (the visitor's
// bookmark cookie, client.CarryBookmarks); then kills (SIGKILL) the node the eu instance talks to and checks the
// visitor keeps session and cart, and that the instance still reads its own writes at
// once. It removes every container, network, volume and image it made, pass or fail.
//
//	cd infra/example && go run ./e2e [--keep-going]
//
// Exit status 0 when every check passed, 1 when one failed, 2 when it could not run.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	sessiondImage = "sessiond/sessiond:example-e2e"
	exampleImage  = "sessiond/example:example-e2e"
)

var nodes = []string{"eu-1", "eu-2", "us-1", "us-2", "ap-1", "ap-2"}

func main() { os.Exit(e2e()) }

func logf(format string, args ...any) {
	fmt.Fprintln(os.Stderr, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
}

// env is one copy of the deployment.
type env struct {
	root, project string
	compose       []string
	vars          []string // compose variables, in every compose command's environment
	portBase      int
}

func (e *env) nodePort(i int) int { return e.portBase + 1 + i }
func (e *env) shopURL(region string) string {
	p := e.portBase + 10
	if region == "us" {
		p++
	}
	return "http://127.0.0.1:" + strconv.Itoa(p)
}

func run(ctx context.Context, extraEnv []string, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...) // #nosec G204 -- docker, compose, go and the binary built here, with arguments of this program's
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Dir = dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (e *env) composeRun(ctx context.Context, extra []string, args ...string) (string, error) {
	full := append(append([]string{}, e.compose[1:]...), "-p", e.project, "-f", filepath.Join(e.root, "infra/compose.yml"), "--profile", "example")
	return run(ctx, append(append([]string{}, e.vars...), extra...), e.root, e.compose[0], append(full, args...)...)
}

// down removes the deployment's containers, networks and volumes.
func (e *env) down(ctx context.Context) error {
	_, _ = e.composeRun(ctx, nil, "kill")
	_, err := e.composeRun(ctx, nil, "down", "-v", "--remove-orphans", "-t", "1")
	return err
}

// leftovers lists what of the project still exists.
func (e *env) leftovers(ctx context.Context) []string {
	var left []string
	label := "label=com.docker.compose.project=" + e.project
	for _, what := range [][]string{{"ps", "-aq", "--filter", label}, {"network", "ls", "-q", "--filter", label}, {"volume", "ls", "-q", "--filter", label}} {
		out, err := run(ctx, nil, "", "docker", what...)
		if err != nil {
			left = append(left, err.Error())
		}
		for _, id := range strings.Fields(out) {
			left = append(left, what[0]+" "+id)
		}
	}
	return left
}

func e2e() int {
	project := flag.String("project", "sessiond-example-e2e", "compose project of the test's own deployment")
	netPrefix := flag.String("net-prefix", "10.216", "first two octets of its subnets (task up uses 10.213, the chaos suite 10.214)")
	portBase := flag.Int("port-base", 19180, "ports on 127.0.0.1: nodes base+1…base+6, the shop's eu and us instances base+10 and base+11")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	root, err := filepath.Abs("../..")
	if err == nil {
		_, err = os.Stat(filepath.Join(root, "infra/compose.yml"))
	}
	if err != nil {
		logf("run from infra/example: %v", err)
		return 2
	}
	e := &env{root: root, project: *project, portBase: *portBase}
	if _, err := run(ctx, nil, "", "docker", "compose", "version"); err == nil {
		e.compose = []string{"docker", "compose"}
	} else if _, err := exec.LookPath("docker-compose"); err == nil {
		e.compose = []string{"docker-compose"}
	} else {
		logf("neither `docker compose` nor `docker-compose` is installed")
		return 2
	}
	if _, err := run(ctx, nil, "", "docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		logf("no Docker engine: %v", err)
		return 2
	}
	work, err := os.MkdirTemp("", "sessiond-example-e2e-")
	if err != nil {
		logf("%v", err)
		return 2
	}
	defer os.RemoveAll(work)

	// Whatever happens from here on, what the test made goes away.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := e.down(cctx); err != nil {
			logf("tearing down: %v", err)
		}
		_, _ = run(cctx, nil, "", "docker", "image", "rm", "-f", sessiondImage, exampleImage)
		if left := e.leftovers(cctx); len(left) > 0 {
			logf("LEFT BEHIND (remove by hand): %s", strings.Join(left, ", "))
		} else {
			logf("deployment %s removed (containers, networks, volumes, images)", e.project)
		}
	}()

	bin, err := buildImages(ctx, root, work)
	if err != nil {
		logf("building the images: %v", err)
		return 2
	}
	keyFile := filepath.Join(work, "cluster.env")
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	clusterKey := base64.StdEncoding.EncodeToString(key)
	if err := os.WriteFile(keyFile, []byte("SESSIOND_CLUSTER_KEY="+clusterKey+"\n"), 0o600); err != nil {
		logf("%v", err)
		return 2
	}
	e.vars = []string{
		"NET_PREFIX=" + *netPrefix, "SESSIOND_ENV_FILE=" + keyFile,
		"SESSIOND_IMAGE=" + sessiondImage, "EXAMPLE_IMAGE=" + exampleImage,
		"LB_PORT=" + strconv.Itoa(*portBase), "LB_RR_PORT=" + strconv.Itoa(*portBase+7),
		"EXAMPLE_EU_PORT=" + strconv.Itoa(*portBase+10), "EXAMPLE_US_PORT=" + strconv.Itoa(*portBase+11),
	}
	for i, n := range nodes {
		e.vars = append(e.vars, strings.ToUpper(strings.ReplaceAll(n, "-", "_"))+"_PORT="+strconv.Itoa(e.nodePort(i)))
	}
	if err := e.down(ctx); err != nil { // a stale run of ours
		logf("removing a previous run's deployment: %v", err)
		return 2
	}

	t := &test{e: e, bin: bin, clusterKey: clusterKey}
	err = t.run(ctx)
	logf("%d checks: %d passed, %d failed (%s)", t.passed+t.failed, t.passed, t.failed, time.Since(start).Round(time.Second))
	if err != nil {
		logf("FAIL: %v", err)
		return 1
	}
	if t.failed > 0 {
		return 1
	}
	fmt.Printf("%d passed, %d failed\n", t.passed, t.failed)
	return 0
}

// buildImages builds the node and shop binaries from this tree and their images under the
// test's own tags (so it never replaces the images `task up` or the chaos suite use). It
// returns the path of the sessiond binary, for the apps command.
func buildImages(ctx context.Context, root, work string) (string, error) {
	t0 := time.Now()
	static := []string{"CGO_ENABLED=0"}
	sd := filepath.Join(work, "sessiond")
	if err := os.MkdirAll(filepath.Join(sd, "data"), 0o750); err != nil {
		return "", err
	}
	bin := filepath.Join(sd, "sessiond")
	if _, err := run(ctx, static, root, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "./edge/cmd/sessiond"); err != nil {
		return "", err
	}
	ex := filepath.Join(work, "example")
	if _, err := run(ctx, static, filepath.Join(root, "infra/example"), "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(ex, "example"), "."); err != nil {
		return "", err
	}
	legacy := []string{"DOCKER_BUILDKIT=0"} // scratch images need nothing BuildKit adds
	if _, err := run(ctx, legacy, root, "docker", "build", "-q", "-f", "infra/Dockerfile", "-t", sessiondImage, sd); err != nil {
		return "", err
	}
	if _, err := run(ctx, legacy, root, "docker", "build", "-q", "-f", "infra/example/Dockerfile", "-t", exampleImage, ex); err != nil {
		return "", err
	}
	logf("images %s and %s built in %s", sessiondImage, exampleImage, time.Since(t0).Round(time.Second))
	return bin, nil
}

// test is the run's checks.
type test struct {
	e              *env
	bin            string
	clusterKey     string
	passed, failed int
}

func (t *test) check(ok bool, format string, args ...any) {
	if ok {
		t.passed++
		logf("ok   "+format, args...)
	} else {
		t.failed++
		logf("FAIL "+format, args...)
	}
}

// waitFor polls cond every 100 ms until it holds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func healthy(url string) bool {
	hc := &http.Client{Timeout: 2 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (t *test) run(ctx context.Context) error {
	e := t.e
	t0 := time.Now()
	if _, err := e.composeRun(ctx, nil, append([]string{"up", "-d", "--no-build"}, nodes...)...); err != nil {
		return err
	}
	for i, n := range nodes {
		u := fmt.Sprintf("http://127.0.0.1:%d/readyz", e.nodePort(i))
		if !waitFor(ctx, 2*time.Minute, func() bool { return healthy(u) }) {
			return fmt.Errorf("node %s not ready within 2 minutes", n)
		}
	}
	logf("six nodes ready in %s", time.Since(t0).Round(100*time.Millisecond))

	// The app's key, as `task example` makes it.
	var apiKey string
	var lastErr error
	if !waitFor(ctx, time.Minute, func() bool {
		out, err := run(ctx, []string{"SESSIOND_CLUSTER_KEY=" + t.clusterKey}, "", t.bin, "apps", "create", "shop-e2e", "--http", fmt.Sprintf("127.0.0.1:%d", e.nodePort(0)))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if last := lines[len(lines)-1]; err == nil && strings.HasPrefix(last, "sdapp_") {
			apiKey = last
			return true
		}
		lastErr = err
		return false
	}) {
		return fmt.Errorf("sessiond apps create: %v", lastErr)
	}
	t1 := time.Now()
	if _, err := e.composeRun(ctx, []string{"EXAMPLE_API_KEY=" + apiKey}, "up", "-d", "--no-build", "example-eu", "example-us"); err != nil {
		return err
	}
	for _, region := range []string{"eu", "us"} {
		if !waitFor(ctx, time.Minute, func() bool { return healthy(e.shopURL(region) + "/healthz") }) {
			return fmt.Errorf("the shop's %s instance did not answer within a minute", region)
		}
	}
	logf("the shop's eu and us instances up in %s", time.Since(t1).Round(100*time.Millisecond))

	v := newVisitor(ctx)
	eu, us := e.shopURL("eu"), e.shopURL("us")

	// Sign in and fill the cart in eu; every eu request reads what the one before wrote.
	if err := v.post(eu, "/signin", url.Values{"user": {"ada"}}); err != nil {
		return err
	}
	for _, item := range []string{"tea", "tea", "cup"} {
		if err := v.post(eu, "/cart/add", url.Values{"item": {item}}); err != nil {
			return err
		}
	}
	want := State{User: "ada", Cart: map[string]int{"tea": 2, "cup": 1}}
	st, err := v.state(eu)
	t.check(err == nil && st.same(want), "eu reads its own writes at once: %s (want %s) %v", st, want, err)

	// The same visitor in us: the session and cart come through its nodes, at once (the
	// visitor's bookmark cookie names the writes made through eu).
	st, err = v.state(us)
	t.check(err == nil && st.same(want), "us reads the session and cart made in eu at once: %s (want %s) %v", st, want, err)
	if err := v.post(us, "/cart/add", url.Values{"item": {"spoon"}}); err != nil {
		return err
	}
	if err := v.post(us, "/cart/remove", url.Values{"item": {"tea"}}); err != nil {
		return err
	}
	want = State{User: "ada", Cart: map[string]int{"tea": 1, "cup": 1, "spoon": 1}}
	st, err = v.state(us)
	t.check(err == nil && st.same(want), "us reads its own writes at once: %s (want %s) %v", st, want, err)
	st, err = v.state(eu)
	t.check(err == nil && st.same(want), "eu reads the changes made in us at once: %s (want %s) %v", st, want, err)

	// Kill the node the eu instance talks to first.
	kill := time.Now()
	id, err := run(ctx, nil, "", "docker", "ps", "-q", "--filter", "label=com.docker.compose.project="+e.project,
		"--filter", "label=com.docker.compose.service=eu-1")
	if err != nil || strings.TrimSpace(id) == "" {
		return fmt.Errorf("eu-1's container: %q, %v", id, err)
	}
	if _, err := run(ctx, nil, "", "docker", "kill", "-s", "KILL", strings.TrimSpace(id)); err != nil {
		return err
	}
	logf("eu-1 killed")
	t.check(t.eventually(ctx, v, eu, want), "eu keeps the session and cart with eu-1 killed (first answer %s after the kill)", time.Since(kill).Round(100*time.Millisecond))
	if err := v.post(eu, "/cart/add", url.Values{"item": {"sugar"}}); err != nil {
		return err
	}
	if err := v.post(eu, "/cart/remove", url.Values{"item": {"cup"}}); err != nil {
		return err
	}
	want = State{User: "ada", Cart: map[string]int{"tea": 1, "spoon": 1, "sugar": 1}}
	st, err = v.state(eu)
	t.check(err == nil && st.same(want), "eu, eu-1 down, reads its own writes at once: %s (want %s) %v", st, want, err)
	st, err = v.state(us)
	t.check(err == nil && st.same(want), "us reads the changes made in eu, eu-1 down, at once: %s (want %s) %v", st, want, err)

	// Sign out in us: the session ends in both regions.
	if err := v.post(us, "/signout", nil); err != nil {
		return err
	}
	st, err = v.state(eu)
	t.check(err == nil && st.same(State{Cart: map[string]int{}}), "eu reads the sign-out made in us at once: %s %v", st, err)
	return nil
}

// eventually polls the visitor's state at base until it is want (30 s at most: replication
// between regions takes milliseconds; a failover, the attempt on the dead node first),
// and logs how long it took.
func (t *test) eventually(ctx context.Context, v *visitor, base string, want State) bool {
	t0 := time.Now()
	var last State
	var lastErr error
	ok := waitFor(ctx, 30*time.Second, func() bool {
		last, lastErr = v.state(base)
		return lastErr == nil && last.same(want)
	})
	if ok {
		logf("     %s: %s after %s", base, last, time.Since(t0).Round(time.Millisecond))
	} else {
		logf("     %s: still %s (%v) after 30s, want %s", base, last, lastErr, want)
	}
	return ok
}

// State is the shop's GET /state.
type State struct {
	User   string         `json:"user"`
	Cart   map[string]int `json:"cart"`
	Region string         `json:"region"`
}

func (s State) same(o State) bool { return s.User == o.User && maps.Equal(s.Cart, o.Cart) }

func (s State) String() string {
	b, _ := json.Marshal(struct {
		User string         `json:"user"`
		Cart map[string]int `json:"cart"`
	}{s.User, s.Cart})
	return string(b)
}

// visitor is a browser: a cookie jar (cookies go to every port of 127.0.0.1, so both
// instances get the session cookie, as a site's regions behind one name would).
type visitor struct {
	ctx context.Context
	hc  *http.Client
}

func newVisitor(ctx context.Context) *visitor {
	jar, _ := cookiejar.New(nil)
	return &visitor{ctx, &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// post sends a form and wants the shop's 303.
func (v *visitor) post(base, path string, form url.Values) error {
	req, err := http.NewRequestWithContext(v.ctx, http.MethodPost, base+path, strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := v.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusSeeOther {
		return fmt.Errorf("POST %s%s: %d %s", base, path, resp.StatusCode, bytes.TrimSpace(b))
	}
	logf("     POST %s%s %s", base, path, form.Encode())
	return nil
}

func (v *visitor) state(base string) (State, error) {
	req, err := http.NewRequestWithContext(v.ctx, http.MethodGet, base+"/state", nil)
	if err != nil {
		return State{}, err
	}
	resp, err := v.hc.Do(req)
	if err != nil {
		return State{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return State{}, fmt.Errorf("GET %s/state: %d %s", base, resp.StatusCode, bytes.TrimSpace(b))
	}
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return State{}, err
	}
	return st, nil
}
