package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"
)

type memoryResult struct {
	Sessions int     `json:"sessions"`
	Users    int     `json:"users"`
	RSSMB    float64 `json:"rss_mb"`
	AnonMB   float64 `json:"anon_mb"`
	FileMB   float64 `json:"file_mb"`
}

type startupResult struct {
	Sessions    int       `json:"sessions"`
	Users       int       `json:"users"`
	SeedSeconds float64   `json:"seed_seconds"`
	FileMB      float64   `json:"data_file_mb"`
	ToHealthy   []float64 `json:"seconds_to_healthz"`
	Median      float64   `json:"median_seconds"`
}

// measureNode starts a single node on dir, waits for /healthz, lets it settle and
// returns its memory and the start-up time.
func measureNode(ctx context.Context, o options, name, dir string) (memoryResult, float64, error) {
	n := newNode(o, name, "local", dir, "", "", false)
	t0 := time.Now()
	err := n.launch(o) // returns once /healthz answers
	if n.p != nil {
		defer n.p.stop()
	}
	if err != nil {
		return memoryResult{}, 0, err
	}
	up := time.Since(t0).Seconds()
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return memoryResult{}, 0, err
	}
	rss, anon, file := memKB(n.p.pid())
	return memoryResult{RSSMB: float64(rss) / 1024, AnonMB: float64(anon) / 1024, FileMB: float64(file) / 1024}, up, nil
}

// runMemory measures a node's RSS empty and holding 100,000 sessions.
func runMemory(ctx context.Context, o options, res *results) error {
	fmt.Printf("\n== memory: RSS of an idle node after start\n")
	for _, users := range []int{0, 10_000} {
		dir := o.data("mem-" + strconv.Itoa(users))
		if users > 0 {
			if _, err := seed(ctx, o, dir, "mem", users, 10); err != nil {
				return err
			}
		}
		m, _, err := measureNode(ctx, o, "mem-"+strconv.Itoa(users), dir)
		if err != nil {
			return err
		}
		m.Users, m.Sessions = users, users*10
		res.Memory = append(res.Memory, m)
		printMem(m)
	}
	if len(res.Memory) == 2 {
		fmt.Printf("  RSS per 100,000 sessions (vs empty node): %.1f MB\n", res.Memory[1].RSSMB-res.Memory[0].RSSMB)
	}
	return nil
}

func printMem(m memoryResult) {
	fmt.Printf("  %8d sessions (%7d users): RSS %7.1f MB (anonymous %7.1f, file-backed %7.1f)\n",
		m.Sessions, m.Users, m.RSSMB, m.AnonMB, m.FileMB)
}

// runStartup seeds a node with startupUsers×10 sessions and times three starts to /healthz.
func runStartup(ctx context.Context, o options, res *results) error {
	users := o.startupUsers
	fmt.Printf("\n== start-up: a node holding %d sessions (%d users)\n", users*10, users)
	dir := o.data("startup")
	sr, err := seed(ctx, o, dir, "big", users, 10)
	if err != nil {
		return err
	}
	st := &startupResult{Sessions: sr.Sessions, Users: sr.Users, SeedSeconds: sr.Seconds}
	st.FileMB = fileMB(dir + "/sessiond.db")
	for i := range 3 {
		m, up, err := measureNode(ctx, o, "startup", dir)
		if err != nil {
			return err
		}
		st.ToHealthy = append(st.ToHealthy, up)
		if i == 0 {
			m.Users, m.Sessions = sr.Users, sr.Sessions
			res.Memory = append(res.Memory, m)
			printMem(m)
		}
	}
	s := slices.Clone(st.ToHealthy)
	slices.Sort(s)
	st.Median = s[len(s)/2]
	res.Startup = st
	fmt.Printf("  data file %.0f MB (seeded in %.0f s); start → /healthz 200: %v s, median %.2f s\n",
		st.FileMB, st.SeedSeconds, roundAll(st.ToHealthy), st.Median)
	if len(res.Memory) >= 2 {
		base := res.Memory[0]
		for _, m := range res.Memory[1:] {
			if m.Sessions > 0 && base.Sessions == 0 {
				fmt.Printf("  RSS per 100,000 sessions (vs empty node): %.1f MB at %d sessions\n",
					(m.RSSMB-base.RSSMB)/float64(m.Sessions)*100_000, m.Sessions)
			}
		}
	}
	return nil
}

func roundAll(v []float64) []string {
	var out []string
	for _, x := range v {
		out = append(out, strconv.FormatFloat(x, 'f', 2, 64))
	}
	return out
}
