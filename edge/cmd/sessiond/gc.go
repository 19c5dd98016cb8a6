package main

import (
	"bytes"
	"os"
	"runtime/debug"
	"strconv"
)

// The garbage collector's settings for a node. A node's live heap is small — a few MB of
// state and the record cache — so at Go's default GOGC of 100 it collects about 50 times a
// second under a write load, and that costs 8–11 µs of the ~75 µs of CPU a durable patch
// takes (BENCHMARKS.md, "The garbage collector"). Unless the environment sets them, a node
// runs with GOGC=400 and, inside a container with a memory limit, a soft memory limit of
// 90 % of it (GOMEMLIMIT), so that the larger heap goal collects sooner rather than
// outgrow the container: the collector then works harder near the limit instead of the
// kernel killing the process.

// defaultGCPercent is the node's GOGC unless the environment sets one.
const defaultGCPercent = 400

// cgroupMemoryFiles are where a container's memory limit is read: cgroup v2, then v1 —
// the container's own cgroup, as Docker and Kubernetes mount it (a process outside a
// container reads the root's, which has none: no limit is set).
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// gcSettings decides the collector's settings: the GC percent to set (0: leave it, the
// environment's GOGC rules) and the soft memory limit to set (0: leave it), from whether
// the environment sets GOGC and GOMEMLIMIT and the container's memory limit file
// (cgroupMax; nil when there is none). A limit file that says "max", is not a number, or
// is implausibly large (cgroup v1 reports "no limit" as about 2^63) sets no limit.
func gcSettings(envGOGC, envMemLimit bool, cgroupMax []byte) (percent int, limit int64) {
	if !envGOGC {
		percent = defaultGCPercent
	}
	if envMemLimit || envGOGC {
		return percent, 0 // whoever tuned the collector by hand decides the limit too
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(cgroupMax)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<50 {
		return percent, 0
	}
	return percent, n / 10 * 9
}

// tuneGC applies gcSettings to this process and returns what it set, for the log.
func tuneGC() (percent int, limit int64) {
	envGOGC, envMemLimit := os.Getenv("GOGC") != "", os.Getenv("GOMEMLIMIT") != "" // empty: unset, as the runtime reads them
	var cgroupMax []byte
	for _, f := range cgroupMemoryFiles {
		if b, err := os.ReadFile(f); err == nil { // #nosec G304 -- fixed paths of the kernel's cgroup files
			cgroupMax = b
			break
		}
	}
	percent, limit = gcSettings(envGOGC, envMemLimit, cgroupMax)
	if percent > 0 {
		debug.SetGCPercent(percent)
	}
	if limit > 0 {
		debug.SetMemoryLimit(limit)
	}
	return percent, limit
}
