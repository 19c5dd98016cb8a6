package loadgen

import (
	"context"
	"path/filepath"
	"testing"
)

func TestSeed(t *testing.T) {
	res, err := Seed(context.Background(), SeedConfig{Path: filepath.Join(t.TempDir(), "sessiond.db"), Users: 30, SessionsPerUser: 2, Batch: 7})
	if err != nil {
		t.Fatal(err)
	}
	if res.Users != 30 || res.Sessions != 60 || res.Records != 120 || res.Bytes <= 0 {
		t.Fatalf("Seed = %+v, want 30 users, 60 sessions, 120 records, some bytes", res)
	}
}

// BenchmarkSeed shows how a transaction's cost grows with its size:
//
//	go test ./edge/loadgen -run '^$' -bench Seed -cpuprofile cpu.out
func BenchmarkSeed(b *testing.B) {
	for _, batch := range []int{500, 5000} {
		b.Run(map[int]string{500: "batch500", 5000: "batch5000"}[batch], func(b *testing.B) {
			for range b.N {
				if _, err := Seed(context.Background(), SeedConfig{Path: filepath.Join(b.TempDir(), "sessiond.db"), Users: 5000, SessionsPerUser: 10, Batch: batch}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
