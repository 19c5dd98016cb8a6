package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Deployment is one copy of infra/compose.yml run under its own compose project, and the
// docker commands that fault it. Every method is safe for concurrent use.
type Deployment struct {
	Project   string
	File      string   // infra/compose.yml
	EnvFile   string   // variables for interpolation and the nodes' env_file
	Env       []string // NAME=value added to every compose command's environment
	compose   []string // "docker compose" or "docker-compose"
	NetPrefix string   // first two octets of every subnet, e.g. 10.214
	Nodes     []*Node  // the six nodes of the deployment, present from start to end
	// Joiner is the node of profile "rebalance" (eu-3): no container until the rebalance
	// scenario starts it, none after it removes it.
	Joiner *Node
	LogDir string // where a removed joiner's log is kept (the run's report directory)

	mu  sync.Mutex
	ids map[string]string // service → container id (cleared when a container is recreated)
	log func(format string, args ...any)
}

// Node is one sessiond node of the deployment.
type Node struct {
	Name    string // compose service and node name, e.g. eu-1
	Region  string // eu, us or ap
	Host    int    // last octet of its address on every network (11, 12, 21, …)
	Port    int    // published HTTP port on 127.0.0.1
	EnvName string // prefix of its per-node compose variables, e.g. EU_1
}

// URL is the node's API as the host reaches it.
func (n *Node) URL() string { return fmt.Sprintf("http://127.0.0.1:%d", n.Port) }

// regionNumber is the third octet of a region network's subnet (compose.yml).
var regionNumber = map[string]int{"eu": 1, "us": 2, "ap": 3}

// Regions lists the region networks.
var Regions = []string{"eu", "us", "ap"}

// composeCommand returns the compose command present: the v2 plugin if it answers, else
// docker-compose (v1.29 on Debian).
func composeCommand(ctx context.Context) ([]string, error) {
	if err := exec.CommandContext(ctx, "docker", "compose", "version").Run(); err == nil {
		return []string{"docker", "compose"}, nil
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}, nil
	}
	return nil, fmt.Errorf("neither `docker compose` nor `docker-compose` is installed")
}

// run runs a command and returns its standard output; on failure the error carries the
// command and its standard error.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Compose runs a compose subcommand for this deployment.
func (d *Deployment) Compose(ctx context.Context, extraEnv []string, args ...string) (string, error) {
	full := append([]string{}, d.compose[1:]...)
	full = append(full, "-p", d.Project, "-f", d.File, "--env-file", d.EnvFile)
	full = append(full, args...)
	env := append(append([]string{}, d.Env...), extraEnv...)
	defer d.slow(time.Now(), "compose", args)
	return run(ctx, env, d.compose[0], full...)
}

// slow logs a docker command that took more than two seconds.
func (d *Deployment) slow(start time.Time, what string, args []string) {
	if el := time.Since(start); el > 2*time.Second && d.log != nil {
		d.log("(%s %s took %s)", what, strings.Join(args, " "), el.Round(100*time.Millisecond))
	}
}

// Docker runs a docker subcommand.
func (d *Deployment) Docker(ctx context.Context, args ...string) (string, error) {
	defer d.slow(time.Now(), "docker", args)
	return run(ctx, nil, "docker", args...)
}

// Container returns the id of a service's container. It asks docker for the project's
// containers by their compose labels (set by compose v1 and v2 alike), which is much
// faster than `docker-compose ps`, and caches the answer.
func (d *Deployment) Container(ctx context.Context, service string) (string, error) {
	d.mu.Lock()
	id, ok := d.ids[service]
	d.mu.Unlock()
	if ok {
		return id, nil
	}
	out, err := d.Docker(ctx, "ps", "-a", "--no-trunc", "--filter", "label=com.docker.compose.project="+d.Project,
		"--format", `{{.ID}} {{.Label "com.docker.compose.service"}}`)
	if err != nil {
		return "", err
	}
	found := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			found[f[1]] = append(found[f[1]], f[0])
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ids == nil {
		d.ids = map[string]string{}
	}
	for svc, ids := range found {
		if len(ids) == 1 {
			d.ids[svc] = ids[0]
		}
	}
	if id, ok := d.ids[service]; ok {
		return id, nil
	}
	return "", fmt.Errorf("service %s: want one container, have %v", service, found[service])
}

func (d *Deployment) forget(service string) {
	d.mu.Lock()
	delete(d.ids, service)
	d.mu.Unlock()
}

// Network returns the docker name of one of the deployment's networks.
func (d *Deployment) Network(name string) string { return d.Project + "_" + name }

// Addr returns a node's address on a region network.
func (d *Deployment) Addr(n *Node, region string) string {
	return fmt.Sprintf("%s.%d.%d", d.NetPrefix, regionNumber[region], n.Host)
}

// Node returns the node of that name (the joiner's too).
func (d *Deployment) Node(name string) *Node {
	for _, n := range d.Nodes {
		if n.Name == name {
			return n
		}
	}
	if d.Joiner != nil && d.Joiner.Name == name {
		return d.Joiner
	}
	panic("no node " + name)
}

// withProfiles prefixes a compose command with the profiles of the services that only
// scenarios start (the rogue node, the joiner): every command that lists, logs or removes
// the whole deployment names them.
func withProfiles(args ...string) []string {
	return append([]string{"--profile", "rogue", "--profile", "rebalance"}, args...)
}

// Up creates and starts every node and the load balancer.
func (d *Deployment) Up(ctx context.Context) error {
	_, err := d.Compose(ctx, nil, "up", "-d", "--no-build")
	return err
}

// Down removes the deployment's containers, networks and volumes, the rogue node's and
// the joiner's too.
// Paused containers are unpaused first (a paused container cannot be stopped).
func (d *Deployment) Down(ctx context.Context) error {
	if out, err := d.Docker(ctx, "ps", "-q", "--filter", "label=com.docker.compose.project="+d.Project, "--filter", "status=paused"); err == nil {
		for _, id := range strings.Fields(out) {
			_, _ = d.Docker(ctx, "unpause", id)
		}
	}
	// Nothing needs a graceful stop at the end of a run.
	_, _ = d.Compose(ctx, nil, withProfiles("kill")...)
	_, err := d.Compose(ctx, nil, withProfiles("down", "-v", "--remove-orphans", "-t", "1")...)
	// Docker sometimes still counts an endpoint of a container it has just removed
	// ("network … has active endpoints"): the next attempt removes what is left.
	for try := 1; err != nil && try < 5 && ctx.Err() == nil; try++ {
		if d.log != nil {
			d.log("tearing down: %v; again (attempt %d)", err, try+1)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(try) * time.Second):
		}
		_, err = d.Compose(ctx, nil, withProfiles("down", "-v", "--remove-orphans", "-t", "1")...)
	}
	if err == nil {
		return nil
	}
	// Compose stops at the first network it cannot remove, before the volumes. The
	// volumes hold a run's data and must go; a network that Docker keeps for an endpoint
	// it lost track of (it outlives even a container-less project) does no harm: the
	// next compose up reuses it.
	for _, left := range d.Leftovers(ctx) {
		if v, ok := strings.CutPrefix(left, "volume "); ok {
			_, _ = d.Docker(ctx, "volume", "rm", "-f", v)
		}
	}
	for _, left := range d.Leftovers(ctx) {
		if !strings.HasPrefix(left, "network ") {
			return err
		}
	}
	if d.log != nil {
		d.log("tearing down: %v; only networks are left, which the next run reuses", err)
	}
	return nil
}

// Leftovers lists containers, networks and volumes of the project that still exist.
func (d *Deployment) Leftovers(ctx context.Context) []string {
	var left []string
	label := "label=com.docker.compose.project=" + d.Project
	for _, what := range [][]string{
		{"ps", "-aq", "--filter", label},
		{"network", "ls", "-q", "--filter", label},
		{"volume", "ls", "-q", "--filter", label},
	} {
		out, err := d.Docker(ctx, what...)
		if err != nil {
			left = append(left, err.Error())
			continue
		}
		for _, id := range strings.Fields(out) {
			left = append(left, what[0]+" "+id)
		}
	}
	return left
}

// Kill sends SIGKILL to a node's container.
func (d *Deployment) Kill(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "kill", "-s", "KILL", id)
	return err
}

// Start starts a stopped node's container.
func (d *Deployment) Start(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "start", id)
	return err
}

// Stop stops a node gracefully: SIGTERM, so it leaves the cluster before it exits
// (SIGKILL after 15s, compose's stop_grace_period).
func (d *Deployment) Stop(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "stop", "-t", "15", id)
	return err
}

// Restart stops a node gracefully (SIGTERM, SIGKILL after 15s) and starts it again.
func (d *Deployment) Restart(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "restart", "-t", "15", id)
	return err
}

// Pause freezes every process of a node (cgroup freezer): its sockets stay open and
// accept connections that nobody answers.
func (d *Deployment) Pause(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "pause", id)
	return err
}

// Unpause thaws a paused node.
func (d *Deployment) Unpause(ctx context.Context, n *Node) error {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return err
	}
	_, err = d.Docker(ctx, "unpause", id)
	return err
}

// Link is a node's attachment to a region network.
type Link struct {
	Node   *Node
	Region string
}

func (l Link) String() string { return l.Node.Name + "↔" + l.Region }

// Disconnect detaches nodes from region networks.
func (d *Deployment) Disconnect(ctx context.Context, links []Link) error {
	for _, l := range links {
		id, err := d.Container(ctx, l.Node.Name)
		if err != nil {
			return err
		}
		if _, err := d.Docker(ctx, "network", "disconnect", d.Network(l.Region), id); err != nil {
			return err
		}
	}
	return nil
}

// Connect attaches nodes to region networks again, each at its own fixed address.
func (d *Deployment) Connect(ctx context.Context, links []Link) error {
	for _, l := range links {
		id, err := d.Container(ctx, l.Node.Name)
		if err != nil {
			return err
		}
		if _, err := d.Docker(ctx, "network", "connect", "--ip", d.Addr(l.Node, l.Region), d.Network(l.Region), id); err != nil &&
			!strings.Contains(err.Error(), "already exists") {
			return err
		}
	}
	return nil
}

// Attached reports the region networks a node's container is attached to now.
func (d *Deployment) Attached(ctx context.Context, n *Node) (map[string]bool, error) {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return nil, err
	}
	out, err := d.Docker(ctx, "inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}", id)
	if err != nil {
		return nil, err
	}
	got := map[string]bool{}
	for _, name := range strings.Fields(out) {
		for _, r := range Regions {
			if name == d.Network(r) {
				got[r] = true
			}
		}
	}
	return got, nil
}

// State returns a container's state: running, paused, exited, ….
func (d *Deployment) State(ctx context.Context, n *Node) (string, error) {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return "", err
	}
	out, err := d.Docker(ctx, "inspect", "-f", "{{.State.Status}}", id)
	return strings.TrimSpace(out), err
}

// Exited reports whether a node's container has exited, with its exit code and the
// first line of a Go panic in its log, if any.
func (d *Deployment) Exited(ctx context.Context, n *Node) (exited bool, code int, panicked string, err error) {
	id, err := d.Container(ctx, n.Name)
	if err != nil {
		return false, 0, "", err
	}
	out, err := d.Docker(ctx, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", id)
	if err != nil {
		return false, 0, "", err
	}
	var status string
	if _, err := fmt.Sscan(out, &status, &code); err != nil || status != "exited" {
		return false, 0, "", err
	}
	logs, _ := exec.CommandContext(ctx, "docker", "logs", "--tail", "400", id).CombinedOutput()
	lines := strings.Split(string(logs), "\n")
	for i, line := range lines {
		if strings.HasPrefix(line, "panic: ") {
			panicked = line
			for _, l := range lines[i+1:] { // the first frame of ours
				if strings.Contains(l, "sessiond/sessiond/") {
					panicked += " in " + strings.TrimSpace(l)
					break
				}
			}
			break
		}
	}
	return true, code, panicked, nil
}

// Recreate replaces a node's container with one whose per-node variables are set as
// given (e.g. a clock offset), keeping its volume and addresses.
func (d *Deployment) Recreate(ctx context.Context, n *Node, vars map[string]string) error {
	var env []string
	for k, v := range vars {
		env = append(env, n.EnvName+"_"+k+"="+v)
	}
	_, err := d.Compose(ctx, env, "up", "-d", "--no-deps", "--no-build", n.Name)
	d.forget(n.Name)
	return err
}

// StartRogue starts the node with another cluster key (profile "rogue").
func (d *Deployment) StartRogue(ctx context.Context, key string) error {
	_, err := d.Compose(ctx, []string{"ROGUE_CLUSTER_KEY=" + key}, "--profile", "rogue", "up", "-d", "--no-deps", "--no-build", "rogue")
	d.forget("rogue")
	return err
}

// StopRogue removes the rogue node's container.
func (d *Deployment) StopRogue(ctx context.Context) error {
	id, err := d.Container(ctx, "rogue")
	if err != nil {
		return err
	}
	d.forget("rogue")
	_, err = d.Docker(ctx, "rm", "-f", "-v", id)
	return err
}

// StartJoiner creates and starts the joiner (profile "rebalance") with a fresh volume.
func (d *Deployment) StartJoiner(ctx context.Context) error {
	_, err := d.Compose(ctx, nil, "--profile", "rebalance", "up", "-d", "--no-deps", "--no-build", d.Joiner.Name)
	d.forget(d.Joiner.Name)
	return err
}

// RemoveJoiner stops the joiner gracefully (it leaves the cluster), then removes its
// container and its volume: a later StartJoiner brings up a node that never was.
func (d *Deployment) RemoveJoiner(ctx context.Context) error {
	id, err := d.Container(ctx, d.Joiner.Name)
	if err != nil {
		return err
	}
	stopErr := d.Stop(ctx, d.Joiner)
	d.forget(d.Joiner.Name)
	// compose.log is written at the end of the run, when the container is gone: keep its
	// log now.
	if out, err := exec.CommandContext(ctx, "docker", "logs", "--timestamps", id).CombinedOutput(); err == nil && d.LogDir != "" {
		_ = os.WriteFile(filepath.Join(d.LogDir, d.Joiner.Name+".log"), out, 0o644)
	}
	if _, err := d.Docker(ctx, "rm", "-f", "-v", id); err != nil {
		return err
	}
	if _, err := d.Docker(ctx, "volume", "rm", d.Project+"_"+d.Joiner.Name+"-data"); err != nil {
		return err
	}
	return stopErr
}

// Logs writes every service's log to path.
func (d *Deployment) Logs(ctx context.Context, path string) error {
	out, err := d.Compose(ctx, nil, withProfiles("logs", "--no-color", "--timestamps")...)
	if werr := os.WriteFile(path, []byte(out), 0o644); werr != nil && err == nil {
		err = werr
	}
	return err
}

// waitUntil polls cond every interval until it returns true or the deadline passes.
func waitUntil(ctx context.Context, timeout, interval time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(interval):
		}
	}
}
