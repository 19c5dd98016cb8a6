package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// bookmarkProbe writes into its session on one node and at once reads the session on
// another, sending the write's bookmark: the read must show the write (read your writes
// across nodes), the node waiting for replication or fetching it when it does not hold it
// yet. It times the read and counts reads that do not show the write.
type bookmarkProbe struct {
	ns    []*node
	token string
}

func newBookmarkProbe(ns []*node) (*bookmarkProbe, error) {
	bm, err := register(probec, ns[0].url(), "bmprobe")
	if err != nil {
		return nil, err
	}
	l, err := logIn(probec, ns[len(ns)-1].url(), "bmprobe", bm)
	if err != nil {
		return nil, err
	}
	return &bookmarkProbe{ns: ns, token: l.token}, nil
}

// bookmarkReads is what a bookmarkProbe measured.
type bookmarkReads struct {
	reads       []time.Duration // of the reads answered 200
	stale       int             // … that did not show the write
	patchErrors int
	readErrors  map[string]int // reads not answered 200, by status ("transport" for none)
}

// run writes and reads every 1/rate s (a pair that takes longer delays the next) until
// ctx ends.
func (p *bookmarkProbe) run(ctx context.Context, rate float64) *bookmarkReads {
	out := &bookmarkReads{readErrors: map[string]int{}}
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
		i := rand.IntN(len(p.ns))
		j := (i + 1 + rand.IntN(len(p.ns)-1)) % len(p.ns)
		st, _, bm, err := request(probec, "PATCH", p.ns[i].url()+"/v1/sessions/current", p.token, "",
			map[string]any{"data": map[string]int{"bm": k}})
		if err != nil || st != http.StatusOK || bm == "" {
			out.patchErrors++
			continue
		}
		start := time.Now()
		st, body, _, err := request(probec, "GET", p.ns[j].url()+"/v1/sessions/current", p.token, bm, nil)
		d := time.Since(start)
		if err != nil || st != http.StatusOK {
			kind := "transport"
			if err == nil {
				kind = strconv.Itoa(st)
			}
			out.readErrors[kind]++
			continue
		}
		out.reads = append(out.reads, d)
		var doc struct {
			Session struct {
				Data map[string]json.RawMessage `json:"data"`
			} `json:"session"`
		}
		if json.Unmarshal(body, &doc) != nil || string(doc.Session.Data["bm"]) != strconv.Itoa(k) {
			out.stale++
		}
	}
}

// bookmarkOutcomes are the outcomes of sessiond_bookmark_requests_total, in the order
// the API describes them.
var bookmarkOutcomes = []string{"covered", "waited", "fetched", "set_aside", "behind"}

// counterDeltas returns, for each label value, the sum over the nodes of name{label="value"}
// in after minus before.
func counterDeltas(name, label string, values []string, after, before []metrics) map[string]float64 {
	out := map[string]float64{}
	for _, v := range values {
		sel := fmt.Sprintf(`%s="%s"`, label, v)
		for i := range after {
			out[v] += after[i].sum(name, sel)
			if i < len(before) {
				out[v] -= before[i].sum(name, sel)
			}
		}
	}
	return out
}
