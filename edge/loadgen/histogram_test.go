package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<20; v++ {
		b := bucketOf(v)
		if b < prev || b > prev+1 {
			t.Fatalf("bucketOf(%d)=%d after %d: buckets must be contiguous", v, b, prev)
		}
		if v > bucketUpper(b) {
			t.Fatalf("value %d above its bucket %d upper bound %d", v, b, bucketUpper(b))
		}
		if b > 0 && v <= bucketUpper(b-1) {
			t.Fatalf("value %d in bucket %d but fits bucket %d", v, b, b-1)
		}
		prev = b
	}
	if b := bucketOf(1<<63 - 1); b >= histBuckets {
		t.Fatalf("bucketOf(max)=%d, want < %d", b, histBuckets)
	}
}

func TestHistogramQuantiles(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var h Histogram
	var vals []time.Duration
	for range 100_000 {
		v := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		vals = append(vals, v)
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.Quantile(q)
		if got < want || float64(got-want) > float64(want)/histSub+1 {
			t.Errorf("Quantile(%v)=%v, want %v within %.1f%%", q, got, want, 100.0/histSub)
		}
	}
	if h.Quantile(1) != vals[len(vals)-1] || h.Max() != vals[len(vals)-1] {
		t.Errorf("Quantile(1)=%v Max=%v, want %v", h.Quantile(1), h.Max(), vals[len(vals)-1])
	}
}
