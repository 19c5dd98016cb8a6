package main_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestE2E_CLI checks the command line's conveniences: help on stdout, the version from
// the build's VCS stamp, health with a URL, the default sync port beside consecutive
// gossip ports, the start-up line naming every port, and a quiet, quick stop.
func TestE2E_CLI(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	t.Parallel()
	t.Run("HelpOnStdout", func(t *testing.T) {
		for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}, {"--data", t.TempDir(), "--help"}} {
			out, errOut, code := runBin(t, nil, args...)
			if code != 0 || errOut != "" || !strings.Contains(out, "Usage:") || !strings.Contains(out, "-access-log-sample") {
				t.Errorf("%v: exit %d, stderr %q, stdout %.80q…; want 0 and the usage on stdout alone", args, code, errOut, out)
			}
		}
		out, errOut, code := runBin(t, nil, "health", "--help")
		if code != 0 || errOut != "" || !strings.Contains(out, "-http") {
			t.Errorf("health --help: exit %d, stderr %q, stdout %q", code, errOut, out)
		}
		for _, args := range [][]string{{"bench", "--help"}, {"bench", "seed", "-h"}} {
			out, errOut, code := runBin(t, nil, args...)
			if code != 0 || errOut != "" || !strings.Contains(out, "Usage") {
				t.Errorf("%v: exit %d, stderr %q, stdout %.80q…; want 0 and the usage on stdout alone", args, code, errOut, out)
			}
		}
		// A bad flag is one line on stderr, not the whole usage.
		_, errOut, code = runBin(t, nil, "--no-such-flag")
		if code != 2 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "--help") {
			t.Errorf("--no-such-flag: exit %d, stderr %q; want 2 and one line pointing at --help", code, errOut)
		}
	})
	t.Run("Version", func(t *testing.T) {
		// The commit the toolchain stamped into the binary, if any (none outside a
		// checkout, or with -buildvcs=false).
		info, err := exec.Command("go", "version", "-m", e2eBinary(t)).Output()
		if err != nil {
			t.Fatalf("go version -m: %v", err)
		}
		rev := regexp.MustCompile(`vcs\.revision=([0-9a-f]{12})`).FindSubmatch(info)
		for _, arg := range []string{"version", "--version", "-version"} {
			out, errOut, code := runBin(t, nil, arg)
			if code != 0 || errOut != "" || !strings.HasPrefix(out, "sessiond ") || strings.TrimSpace(out) == "sessiond dev" ||
				!strings.Contains(out, "go1.") {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want the version and the Go version", arg, code, out, errOut)
			}
			if rev != nil && !strings.Contains(out, "commit "+string(rev[1])) {
				t.Errorf("%s: %q does not name commit %s, which the build recorded", arg, out, rev[1])
			}
		}
	})
	t.Run("BadAccessLogSample", func(t *testing.T) {
		if _, errOut, code := runBin(t, nil, "--data", t.TempDir(), "--access-log-sample", "2"); code != 1 || !strings.Contains(errOut, "AccessLogSample") {
			t.Errorf("--access-log-sample 2: exit %d, stderr %q; want 1 naming AccessLogSample", code, errOut)
		}
	})

	// Two nodes with consecutive gossip ports and the default sync port, as a README
	// reader starts them: the sync port used to be gossip + 1, the second node's gossip
	// port, and one of them died with "address already in use".
	base := consecutiveFreePorts(t)
	gossip := func(i int) string { return "127.0.0.1:" + strconv.Itoa(base+i) }
	a := newDaemon(t, "cli-a", "", "--gossip", gossip(0), "--sync", "")
	a.start()
	b := newDaemon(t, "cli-b", "", "--gossip", gossip(1), "--sync", "", "--join", gossip(0))
	b.start()
	a.waitReady()
	b.waitReady()

	t.Run("StartupLine", func(t *testing.T) {
		want := fmt.Sprintf(`msg="node started" node=cli-a http=%s gossip="%s (tcp, udp)" sync=127.0.0.1:%d`, a.http, gossip(0), base+100)
		if !strings.Contains(a.out.String(), want) {
			t.Errorf("start-up output lacks %q:\n%s", want, a.out.String())
		}
	})
	t.Run("HealthURL", func(t *testing.T) {
		_, port, _ := net.SplitHostPort(a.http)
		for _, tc := range []struct {
			addr string
			code int
		}{
			{a.http, 0},
			{"http://" + a.http, 0},
			{"http://" + a.http + "/", 0},
			{":" + port, 0},
			{"0.0.0.0:" + port, 0},
			{"http://127.0.0.1:1", 1},
			{"ftp://" + a.http, 2},
			{"no port", 2},
		} {
			out, errOut, code := runBin(t, nil, "health", "--http", tc.addr)
			if code != tc.code || (code == 0) != (out == "ok\n") {
				t.Errorf("health --http %q: exit %d, stdout %q, stderr %q; want exit %d", tc.addr, code, out, errOut, tc.code)
			}
		}
	})
	t.Run("HealthReady", func(t *testing.T) {
		// b caught up with a (waitReady): /readyz answers 200 on both.
		for _, d := range []*daemon{a, b} {
			if out, errOut, code := runBin(t, nil, "health", "--ready", "--http", d.http); code != 0 || out != "ok\n" {
				t.Errorf("health --ready --http %s: exit %d, stdout %q, stderr %q; want 0, ok", d.http, code, out, errOut)
			}
		}
	})
	t.Run("Stop", func(t *testing.T) {
		// Both at once, as Ctrl-C on a local cluster does: each is told of the other's
		// leave while leaving itself. Neither waits out serf's 11 s or reports an error.
		start := time.Now()
		var wg sync.WaitGroup
		for _, d := range []*daemon{a, b} {
			d.signal(syscall.SIGTERM)
			wg.Go(func() {
				if code := d.wait(8 * time.Second); code != 0 {
					t.Errorf("%s: exit %d after SIGTERM, want 0", d.name, code)
				}
			})
		}
		wg.Wait()
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("stopping took %s", d)
		}
		for _, d := range []*daemon{a, b} {
			if out := d.out.String(); strings.Contains(out, "sessiond: shutdown") {
				t.Errorf("%s reported a shutdown error:\n%s", d.name, out)
			}
		}
	})
}

// consecutiveFreePorts returns a port p such that p and p+1 are free for TCP and UDP and
// p+100 and p+101 for TCP.
func consecutiveFreePorts(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(30000)
		if portsFree(p, p+1) && tcpFree(p+100) && tcpFree(p+101) {
			return p
		}
	}
	t.Fatal("no free block of ports")
	return 0
}

func portsFree(ports ...int) bool {
	for _, p := range ports {
		if !tcpFree(p) {
			return false
		}
		c, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

func tcpFree(p int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
