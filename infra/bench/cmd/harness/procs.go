package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a process the harness started; every one is stopped by stopAll, also on
// failure and on Ctrl-C.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

var (
	procsMu sync.Mutex
	procs   []*proc
)

// start runs bin with args, its output in logDir/name.log, in a process group of its own.
func start(logDir, name, bin string, args ...string) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own group, so that stop can signal a target and all it runs; and killed with
	// the harness if the harness dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	procsMu.Lock()
	procs = append(procs, p)
	procsMu.Unlock()
	return p, nil
}

// stop sends SIGTERM to the process group and waits up to 15s, then SIGKILLs it.
func (p *proc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stopAll stops every process still running, newest first.
func stopAll() {
	procsMu.Lock()
	ps := append([]*proc(nil), procs...)
	procs = nil
	procsMu.Unlock()
	for i := len(ps) - 1; i >= 0; i-- {
		ps[i].stop()
	}
}

// freePort returns a loopback port the kernel had free a moment ago.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback() string { return "127.0.0.1:" + strconv.Itoa(freePort()) }

var httpc = &http.Client{Timeout: 5 * time.Second}

// probec is the client of the probes that run many requests at once (the revoker's
// pollers): net/http keeps only two idle connections per host by default, and a probe
// that dialled anew for most requests would measure connection set-up and run the
// machine out of ephemeral ports.
var probec = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
	MaxIdleConns: 256, MaxIdleConnsPerHost: 64, IdleConnTimeout: time.Minute}}

// waitHTTP polls url until it answers 200, the process exits, or the timeout passes.
func waitHTTP(p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := httpc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before %s answered (see its log)", p.name, url)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not 200 after %s", p.name, url, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitTCP polls addr until it accepts a connection.
func waitTCP(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited before listening on %s", p.name, addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not listening after %s", p.name, addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cpuSeconds returns the CPU time (user+sys) a process has used, from /proc.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ is 100 on Linux
}

// cpuNanos returns the CPU time a process's threads have used, in nanoseconds, from
// /proc/PID/task/*/schedstat: finer than cpuSeconds's clock ticks, for short intervals
// (a thread that exited takes its time with it; Go's threads rarely exit).
func cpuNanos(pid int) int64 {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var t int64
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "schedstat"))
		if err != nil {
			continue
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			n, _ := strconv.ParseInt(f[0], 10, 64)
			t += n
		}
	}
	return t
}

// memKB returns VmRSS, RssAnon and RssFile of a process in KiB.
func memKB(pid int) (rss, anon, file int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "RssAnon":
			anon = n
		case "RssFile":
			file = n
		}
	}
	return
}

// loadAvg returns the 1-minute load average.
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

var errInterrupted = errors.New("interrupted")

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return errInterrupted
	case <-time.After(d):
		return nil
	}
}

func fileMB(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return float64(fi.Size()) / (1 << 20)
}

// deviceWritten returns the bytes written so far to the block device holding path
// (/proc/diskstats, sectors of 512 bytes), or 0 if it cannot tell. It counts what every
// process wrote there, so a run's difference is the targets' writes while nothing else
// writes much. A process's own count (/proc/PID/io write_bytes) is not used: it is
// charged when page-cache pages are dirtied, a whole large folio at a time on recent
// kernels: a probe here that overwrote zeros already in the page cache with 3.8 KB
// records, each synced, was charged 776 KB per record while the disk got 7.9 KB.
func deviceWritten(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0
	}
	dev := uint64(st.Dev) // #nosec G115 -- a device number
	major := (dev>>8)&0xfff | (dev>>32)&^0xfff
	minor := dev&0xff | (dev>>12)&^0xff
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[0] != strconv.FormatUint(major, 10) || f[1] != strconv.FormatUint(minor, 10) {
			continue
		}
		sectors, _ := strconv.ParseFloat(f[9], 64)
		return 512 * sectors
	}
	return 0
}
