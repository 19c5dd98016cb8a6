package main

import (
	"bufio"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// metrics is one scrape of a node's /metrics: sample name with labels → value.
type metrics map[string]float64

func scrape(base string) (metrics, error) {
	resp, err := httpc.Get(base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s/metrics: status %d", base, resp.StatusCode)
	}
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[line[:i]] = v
	}
	return m, sc.Err()
}

// sum adds every sample whose name (with labels) starts with prefix and contains all of
// the label fragments.
func (m metrics) sum(prefix string, labels ...string) float64 {
	var t float64
outer:
	for k, v := range m {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue outer
			}
		}
		t += v
	}
	return t
}

// histogram is a Prometheus histogram's cumulative bucket counts by upper bound.
type histogram struct {
	bounds []float64 // ascending, +Inf last
	counts []float64 // cumulative
}

// histogramOf returns histogram name summed over every scrape in ms minus every scrape
// in base (a delta over an interval when base are the earlier scrapes).
func histogramOf(name string, ms, base []metrics) histogram {
	acc := map[float64]float64{}
	add := func(m metrics, sign float64) {
		for k, v := range m {
			rest, ok := strings.CutPrefix(k, name+"_bucket{")
			if !ok {
				continue
			}
			i := strings.Index(rest, `le="`)
			if i < 0 {
				continue
			}
			le := rest[i+4:]
			le = le[:strings.IndexByte(le, '"')]
			b := math.Inf(1)
			if le != "+Inf" {
				b, _ = strconv.ParseFloat(le, 64)
			}
			acc[b] += sign * v
		}
	}
	for _, m := range ms {
		add(m, 1)
	}
	for _, m := range base {
		add(m, -1)
	}
	var h histogram
	for b := range acc {
		h.bounds = append(h.bounds, b)
	}
	sort.Float64s(h.bounds)
	for _, b := range h.bounds {
		h.counts = append(h.counts, acc[b])
	}
	return h
}

func (h histogram) count() float64 {
	if len(h.counts) == 0 {
		return 0
	}
	return h.counts[len(h.counts)-1]
}

// quantile interpolates linearly within the bucket holding q, as Prometheus's
// histogram_quantile does.
func (h histogram) quantile(q float64) float64 {
	n := h.count()
	if n == 0 {
		return math.NaN()
	}
	rank := q * n
	lo, prev := 0.0, 0.0
	for i, b := range h.bounds {
		c := h.counts[i]
		if c >= rank {
			if math.IsInf(b, 1) {
				return lo
			}
			if c == prev {
				return b
			}
			return lo + (b-lo)*(rank-prev)/(c-prev)
		}
		lo, prev = b, c
	}
	return lo
}

// maxBound returns the upper bound of the lowest bucket holding every sample (+Inf when
// some are above the last finite bound; NaN when there are none): a histogram knows its
// maximum only that far.
func (h histogram) maxBound() float64 {
	n := h.count()
	if n == 0 {
		return math.NaN()
	}
	for i, c := range h.counts {
		if c >= n {
			return h.bounds[i]
		}
	}
	return math.Inf(1)
}

// millis is a figure in milliseconds read from a histogram, which may have none: it is
// JSON null and prints as "–" when there were no samples (NaN), and "∞" beyond the last
// finite bucket.
type millis float64

func msOf(seconds float64) millis { return millis(seconds * 1000) }

func (m millis) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(m)) || math.IsInf(float64(m), 0) {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, float64(m), 'f', 3, 64), nil
}

func (m millis) String() string {
	switch {
	case math.IsNaN(float64(m)):
		return "–"
	case math.IsInf(float64(m), 1):
		return "∞"
	}
	return strconv.FormatFloat(float64(m), 'f', 1, 64) + " ms"
}
