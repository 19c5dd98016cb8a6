package main

import (
	"math"
	"os"
	"strings"
	"testing"
)

func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want wrkRun
	}{
		{"OK", `Running 2s test @ http://127.0.0.1:18082/v1/sessions/current
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.24ms    4.31ms  44.27ms   91.75%
    Req/Sec    33.42k     9.53k   52.18k    65.00%
  Latency Distribution
     50%  837.00us
     75%    2.35ms
     90%    5.62ms
     99%   22.13ms
  133795 requests in 2.03s, 104.88MB read
Requests/sec:  66010.65
Transfer/sec:     51.75MB
`, wrkRun{Requests: 133795, Throughput: 66010.65, P50: 0.837, P90: 5.62, P99: 22.13, Max: 44.27}},
		{"Errors", `Running 1s test @ http://127.0.0.1:18082/v1/sessions/current
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   832.34us    2.94ms    1.02s   94.93%
    Req/Sec    46.10k    14.84k   72.54k    70.00%
  Latency Distribution
     50%   60.00us
     75%  125.00us
     90%    1.60ms
     99%   18.04ms
  46136 requests in 1.01s, 22.04MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 46136
Requests/sec:  45637.95
Transfer/sec:     21.81MB
`, wrkRun{Requests: 46136, Throughput: 45637.95, P50: 0.06, P90: 1.6, P99: 18.04, Max: 1020, Errors: 46141}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got wrkRun
			if err := parseWrk([]byte(tc.out), &got); err != nil {
				t.Fatalf("parseWrk: %v", err)
			}
			near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9*max(1, math.Abs(b)) }
			if got.Requests != tc.want.Requests || got.Errors != tc.want.Errors || !near(got.Throughput, tc.want.Throughput) ||
				!near(got.P50, tc.want.P50) || !near(got.P90, tc.want.P90) || !near(got.P99, tc.want.P99) || !near(got.Max, tc.want.Max) {
				t.Fatalf("parseWrk=%+v, want %+v", got, tc.want)
			}
		})
	}
	t.Run("ErrNoFigures", func(t *testing.T) {
		var got wrkRun
		if err := parseWrk([]byte("unable to connect to 127.0.0.1:1 Connection refused\n"), &got); err == nil {
			t.Fatal("parseWrk of an output without figures: nil error")
		}
	})
}

func TestWrkScript(t *testing.T) {
	path, err := wrkScript(t.TempDir(), "a.b-c_d")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := `wrk.headers["Authorization"] = "Bearer a.b-c_d"`; strings.TrimSpace(string(b)) != want {
		t.Fatalf("script=%q, want %q", b, want)
	}
}
