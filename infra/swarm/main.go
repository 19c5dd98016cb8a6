// Command swarm deploys sessiond on Docker Swarm (infra/swarm/stack.yml) and tests it
// there. Run from the repository root:
//
//	go run ./infra/swarm test   deploy a stack of its own, check it, remove it (task swarm:test)
//	go run ./infra/swarm up     build the images and deploy the stack "sessiond" (task swarm:up)
//	go run ./infra/swarm down   remove that stack, its volumes, and the swarm if up made it
//
// Both up and test initialise a single-node swarm when the Docker engine is in none, and
// leave it again afterwards (test at its end, up at down). test always removes what it
// made (stack, volumes, network, secret, config, the swarm it made), also when a check
// fails or it is interrupted: other work shares this Docker engine.
//
// test checks, through the load balancer only (as a user would reach the stack): every
// replica is alive in every node's /v1/cluster; a user signs up, logs in, writes and
// reads; a task killed with SIGKILL is rescheduled and rejoins as the same member with
// its data (same node ID, which lives in its slot's volume); a rolling update of every
// service under a write load loses no acknowledged write, and every node ends up with
// every one.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./infra/swarm test|up|down [flags]  (from the repository root; test --help)")
		os.Exit(2)
	}
	cmd, args := os.Args[1], os.Args[2:]
	fs := flag.NewFlagSet("swarm "+cmd, flag.ExitOnError)
	o := options{}
	fs.StringVar(&o.stack, "stack", "", "stack name (default: sessiond for up and down, sessiond-swarmtest for test)")
	fs.IntVar(&o.port, "port", 0, "host port of the load balancer (default: 8080 for up, 18380 for test)")
	fs.IntVar(&o.replicas, "replicas", 2, "tasks per region")
	fs.StringVar(&o.subnet, "subnet", "", "the stack network's subnet (default: 10.231.0.0/24 for up, 10.232.0.0/24 for test)")
	fs.BoolVar(&o.noBuild, "no-build", false, "use the images as they are (infra/images.sh not run)")
	fs.BoolVar(&o.keep, "keep", false, "test: leave the stack running at the end (then: go run ./infra/swarm down --stack NAME)")
	fs.DurationVar(&o.load, "load-after", 5*time.Second, "test: how long the write load goes on after the rolling update completes")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	test := cmd == "test"
	o.stack = or(o.stack, map[bool]string{true: "sessiond-swarmtest", false: "sessiond"}[test])
	o.subnet = or(o.subnet, map[bool]string{true: "10.232.0.0/24", false: "10.231.0.0/24"}[test])
	if o.port == 0 {
		o.port = map[bool]int{true: 18380, false: 8080}[test]
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "test":
		err = runTest(ctx, o)
	case "up":
		err = up(ctx, o)
	case "down":
		err = down(context.Background(), o)
	default:
		err = fmt.Errorf("unknown command %q: want test, up or down", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "swarm "+cmd+":", err)
		os.Exit(1)
	}
}

type options struct {
	stack, subnet  string
	port, replicas int
	noBuild, keep  bool
	load           time.Duration
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// stateDir keeps what up leaves for down: the cluster key and whether up made the swarm.
func stateDir(stack string) string { return filepath.Join("build", "swarm", stack) }

// logf prints a progress line with the time since start.
var start = time.Now()

func logf(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// docker runs the docker command and returns its trimmed output; an error carries it.
func docker(ctx context.Context, env []string, args ...string) (string, error) {
	c := exec.CommandContext(ctx, "docker", args...) // #nosec G204 -- our own arguments
	c.Env = append(os.Environ(), env...)
	out, err := c.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// ensureSwarm initialises a single-node swarm when the engine is in none, and reports
// whether it did.
func ensureSwarm(ctx context.Context) (made bool, err error) {
	state, err := docker(ctx, nil, "info", "--format", "{{.Swarm.LocalNodeState}}")
	if err != nil {
		return false, err
	}
	switch state {
	case "active":
		logf("the engine is in a swarm already: using it (and leaving it as it is)")
		return false, nil
	case "inactive":
	default:
		return false, fmt.Errorf("the engine's swarm state is %q; want active or inactive", state)
	}
	if _, err := docker(ctx, nil, "swarm", "init", "--advertise-addr", "127.0.0.1"); err != nil {
		return false, err
	}
	logf("initialised a single-node swarm (test leaves it at its end, up leaves it to down)")
	return true, nil
}

func leaveSwarm(ctx context.Context) {
	if _, err := docker(ctx, nil, "swarm", "leave", "--force"); err != nil {
		logf("leaving the swarm: %v", err)
		return
	}
	// The swarm made docker_gwbridge, the bridge that connects tasks to the outside; it
	// outlives the swarm. Nothing else uses it once the swarm is gone.
	if _, err := docker(ctx, nil, "network", "rm", "docker_gwbridge"); err != nil {
		logf("removing docker_gwbridge: %v", err)
	}
	logf("left the swarm")
}

func buildImages(ctx context.Context, o options) error {
	if o.noBuild {
		return nil
	}
	logf("building the images (infra/images.sh)")
	c := exec.CommandContext(ctx, "bash", "infra/images.sh")
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	return c.Run()
}

// writeKey writes a new cluster key (base64 of 32 random bytes) to dir/cluster.key.
func writeKey(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	path, err := filepath.Abs(filepath.Join(dir, "cluster.key"))
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(b)+"\n"), 0o600)
}

// deployEnv is the stack file's variables.
func deployEnv(o options, keyFile, revision string) []string {
	return []string{
		"CLUSTER_KEY_FILE=" + keyFile, fmt.Sprintf("LB_PORT=%d", o.port), fmt.Sprintf("REPLICAS=%d", o.replicas),
		"SUBNET=" + o.subnet, "REVISION=" + revision,
		// The test signs up a few users from one address (the host).
		"SIGNUPS_PER_ADDRESS=100",
	}
}

func deploy(ctx context.Context, o options, keyFile, revision string) error {
	_, err := docker(ctx, deployEnv(o, keyFile, revision), "stack", "deploy", "--resolve-image", "never",
		"-c", filepath.Join("infra", "swarm", "stack.yml"), o.stack)
	return err
}

// removeStack removes the stack, waits for its containers and network to go, then removes
// its volumes. It keeps going after errors and returns the first.
func removeStack(ctx context.Context, stack string) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if _, err := docker(ctx, nil, "stack", "rm", stack); err != nil && !strings.Contains(err.Error(), "Nothing found in stack") {
		keep(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		cs, err1 := docker(ctx, nil, "ps", "-aq", "--filter", "label=com.docker.stack.namespace="+stack)
		ns, err2 := docker(ctx, nil, "network", "ls", "-q", "--filter", "label=com.docker.stack.namespace="+stack)
		if err1 == nil && err2 == nil && cs == "" && ns == "" {
			break
		}
		time.Sleep(time.Second)
	}
	vols, err := docker(ctx, nil, "volume", "ls", "-q", "--filter", "name="+stack+"_")
	keep(err)
	for _, v := range strings.Fields(vols) {
		if strings.HasPrefix(v, stack+"_") {
			_, err := docker(ctx, nil, "volume", "rm", "-f", v)
			keep(err)
		}
	}
	return first
}

func up(ctx context.Context, o options) error {
	made, err := ensureSwarm(ctx)
	if err != nil {
		return err
	}
	dir := stateDir(o.stack)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if made {
		if err := os.WriteFile(filepath.Join(dir, "swarm-made-by-up"), nil, 0o600); err != nil {
			return err
		}
	}
	if err := buildImages(ctx, o); err != nil {
		return err
	}
	key, err := filepath.Abs(filepath.Join(dir, "cluster.key"))
	if err != nil {
		return err
	}
	if _, err := os.Stat(key); err != nil {
		if key, err = writeKey(dir); err != nil {
			return err
		}
	}
	if err := deploy(ctx, o, key, "1"); err != nil {
		return err
	}
	lb := fmt.Sprintf("http://127.0.0.1:%d", o.port)
	c := newClient()
	if err := waitFor(ctx, 3*time.Minute, "a ready node behind the load balancer", func() (bool, string) {
		r := c.do(ctx, lb, "GET", "/readyz", "", "", nil)
		return r.status == 200, r.describe()
	}); err != nil {
		return err
	}
	logf("sessiond is up on Swarm: %s  (stack %s; go run ./infra/swarm down, or task swarm:down)", lb, o.stack)
	return nil
}

func down(ctx context.Context, o options) error {
	err := removeStack(ctx, o.stack)
	dir := stateDir(o.stack)
	if _, serr := os.Stat(filepath.Join(dir, "swarm-made-by-up")); serr == nil {
		leaveSwarm(ctx)
	}
	if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
		err = rerr
	}
	if err == nil {
		logf("removed stack %s and its volumes", o.stack)
	}
	return err
}

// waitFor polls cond every 500 ms until it holds, ctx ends or d passes; the error names
// what was awaited and cond's last word.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, string)) error {
	deadline := time.Now().Add(d)
	last := ""
	for {
		ok, msg := cond()
		if ok {
			return nil
		}
		last = msg
		if time.Now().After(deadline) {
			return fmt.Errorf("waited %s for %s: %s", d, what, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), last)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// services returns the stack's sessiond services, one per region.
func services(stack string) []string {
	return []string{stack + "_eu", stack + "_us", stack + "_ap"}
}

// nodeNames returns every replica's node name: REGION-SLOT.
func nodeNames(replicas int) []string {
	var out []string
	for _, r := range []string{"ap", "eu", "us"} {
		for i := 1; i <= replicas; i++ {
			out = append(out, fmt.Sprintf("%s-%d", r, i))
		}
	}
	slices.Sort(out)
	return out
}

var errCheck = errors.New("check failed")
