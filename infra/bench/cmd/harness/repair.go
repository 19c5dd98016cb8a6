package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"time"
)

type seedResult struct {
	Users    int     `json:"users"`
	Sessions int     `json:"sessions"`
	Records  int     `json:"records"`
	Bytes    int64   `json:"data_bytes"`
	Seconds  float64 `json:"seconds"`
}

// seed writes users×perUser sessions into a stopped node's data directory.
func seed(ctx context.Context, o options, dir, prefix string, users, perUser int) (*seedResult, error) {
	out, err := exec.CommandContext(ctx, o.sessiond(), "bench", "seed", "--data", dir, "--prefix", prefix,
		"--users", strconv.Itoa(users), "--sessions-per-user", strconv.Itoa(perUser), "--batch", "200").Output()
	if err != nil {
		return nil, fmt.Errorf("sessiond bench seed: %w", err)
	}
	var r seedResult
	return &r, json.Unmarshal(out, &r)
}

type repairResult struct {
	Records       int                `json:"records_missing"`
	DataBytes     int64              `json:"data_bytes"`
	ToReady       float64            `json:"seconds_to_ready"`
	ToConverged   float64            `json:"seconds_to_converged"`
	SyncBytes     float64            `json:"sync_bytes_sent"`
	ByKind        map[string]float64 `json:"sync_bytes_by_kind"`
	BytesPerData  float64            `json:"bytes_over_data"`
	Rounds        map[string]float64 `json:"rounds"`
	InSyncSeconds float64            `json:"seconds_to_in_sync_round"`
	Load          float64            `json:"load_average"`
}

// runRepair stops a node of a two-node cluster, writes records to the other while it is
// down (straight into its data file), restarts the stopped node and times anti-entropy
// until it holds everything, counting the sync bytes both nodes sent.
func runRepair(ctx context.Context, o options, res *results) error {
	records := o.repairUsers * 10
	fmt.Printf("\n== repair: a node missing %d records (%d users, %d sessions)\n", records, o.repairUsers, o.repairUsers*8)
	key, err := clusterKey(o)
	if err != nil {
		return err
	}
	a := newNode(o, "repair-a", "eu", o.data("repair-a"), key, "", true)
	if err := a.launch(o); err != nil {
		return err
	}
	if err := a.waitReady(30 * time.Second); err != nil {
		return err
	}
	b := newNode(o, "repair-b", "us", o.data("repair-b"), key, a.gossip, true)
	if err := b.launch(o); err != nil {
		return err
	}
	if err := b.waitReady(30 * time.Second); err != nil {
		return err
	}
	if err := waitMembers(ctx, []*node{a, b}, 2, 30*time.Second); err != nil {
		return err
	}
	b.p.stop()
	a.p.stop()
	sr, err := seed(ctx, o, a.data, "repair", o.repairUsers, 8)
	if err != nil {
		return err
	}
	if err := a.launch(o); err != nil {
		return err
	}
	if err := a.waitReady(60 * time.Second); err != nil {
		return err
	}
	ma0, err := scrape(a.url())
	if err != nil {
		return err
	}
	wantUsers, wantSessions := ma0.sum("sessiond_stored_users"), ma0.sum("sessiond_stored_sessions")
	load := loadAvg()
	t0 := time.Now()
	if err := b.launch(o); err != nil {
		return err
	}
	rr := &repairResult{Records: sr.Records, DataBytes: sr.Bytes, Load: load}
	var mb metrics
	for {
		if rr.ToReady == 0 {
			if st, _, err := call("GET", b.url()+"/readyz", "", nil); err == nil && st == 200 {
				rr.ToReady = time.Since(t0).Seconds()
			}
		}
		if m, err := scrape(b.url()); err == nil {
			mb = m
			if m.sum("sessiond_stored_users") == wantUsers && m.sum("sessiond_stored_sessions") == wantSessions {
				rr.ToConverged = time.Since(t0).Seconds()
				break
			}
		}
		if time.Since(t0) > 5*time.Minute {
			return fmt.Errorf("repair-b holds %v users, %v sessions after 5 minutes, want %v, %v",
				mb.sum("sessiond_stored_users"), mb.sum("sessiond_stored_sessions"), wantUsers, wantSessions)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	// Let the exchange in flight finish (both nodes run anti-entropy with each other),
	// then wait for a round that finds the replicas identical.
	for {
		ma, _ := scrape(a.url())
		mb, _ = scrape(b.url())
		if ma.sum(`sessiond_antientropy_rounds_total{result="in_sync"}`)-ma0.sum(`sessiond_antientropy_rounds_total{result="in_sync"}`) > 0 ||
			mb.sum(`sessiond_antientropy_rounds_total{result="in_sync"}`) > 0 {
			rr.InSyncSeconds = time.Since(t0).Seconds()
			rr.ByKind = map[string]float64{}
			for _, kind := range []string{"push", "digest", "leaves"} {
				k := `kind="` + kind + `"`
				rr.ByKind[kind] = ma.sum("sessiond_sync_bytes_total", `direction="sent"`, k) - ma0.sum("sessiond_sync_bytes_total", `direction="sent"`, k) +
					mb.sum("sessiond_sync_bytes_total", `direction="sent"`, k)
				rr.SyncBytes += rr.ByKind[kind]
			}
			rr.Rounds = map[string]float64{}
			for _, r := range []string{"repaired", "in_sync", "error"} {
				l := `{result="` + r + `"}`
				rr.Rounds[r] = ma.sum("sessiond_antientropy_rounds_total"+l) - ma0.sum("sessiond_antientropy_rounds_total"+l) + mb.sum("sessiond_antientropy_rounds_total"+l)
			}
			break
		}
		if time.Since(t0) > 2*time.Minute {
			return fmt.Errorf("no in_sync anti-entropy round within 2 minutes")
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	rr.BytesPerData = rr.SyncBytes / float64(rr.DataBytes)
	res.Repair = rr
	fmt.Printf("  missing data: %d records, %.1f MB in replication encoding\n", rr.Records, float64(rr.DataBytes)/1e6)
	fmt.Printf("  restart → ready %.2f s; → holds every record %.2f s   (target ≤ 10 s)\n", rr.ToReady, rr.ToConverged)
	fmt.Printf("  sync bytes sent by both nodes: %.1f MB = %.2f× the data   (target ≤ 2×); by kind %v\n",
		rr.SyncBytes/1e6, rr.BytesPerData, fmtKinds(rr.ByKind))
	fmt.Printf("  anti-entropy rounds %v; an in-sync round confirmed at %.1f s\n", rr.Rounds, rr.InSyncSeconds)
	return nil
}

func fmtKinds(m map[string]float64) string {
	s := ""
	for _, k := range []string{"push", "digest", "leaves"} {
		s += fmt.Sprintf("%s %.1f MB ", k, m[k]/1e6)
	}
	return s
}
