package main

import (
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestForgedID(t *testing.T) {
	real := "18ee376cab04e3d5000000002c7840f2fc0ccf570000000000000002" // a message id the server gave
	got, ok := forgedID(real, 59*time.Second)
	if !ok {
		t.Fatalf("forgedID(%q) failed", real)
	}
	b, err := hex.DecodeString(got)
	if err != nil || len(b) != 28 {
		t.Fatalf("forgedID = %q: not 28 bytes of hex", got)
	}
	ahead := time.Until(time.Unix(0, int64(binary.BigEndian.Uint64(b))))
	if ahead < 58*time.Second || ahead > 60*time.Second {
		t.Errorf("forged timestamp is %s ahead, want 59s", ahead)
	}
	if got[24:40] != real[24:40] {
		t.Errorf("node = %s, want the real id's %s", got[24:40], real[24:40])
	}
	if seq := binary.BigEndian.Uint64(b[20:]); seq != 1 {
		t.Errorf("seq = %d, want 1", seq)
	}
	for _, bad := range []string{"", "zz", real[:54]} {
		if _, ok := forgedID(bad, time.Second); ok {
			t.Errorf("forgedID(%q) ok", bad)
		}
	}
}

func TestAbuseChecks(t *testing.T) {
	cfg := AbuseConfig{Streams: 12, ClockTolerance: 5 * time.Second, ForgedAhead: 59 * time.Second, NullKeys: 100}
	good := func() *AbuseReport {
		return &AbuseReport{Guesses: map[int]int{401: 90, 429: 30}, ForgedSends: map[int]int{400: 6},
			StreamOpens: map[int]int{200: 8, 429: 4}, StreamMaxAccepted: 8, NullFloods: map[int]int{200: 5},
			ClockProbes: 6, ClockAheadMax: 3 * time.Millisecond, HonestLogins: 40}
	}
	failed := func(rep *AbuseReport, steady time.Duration) []string {
		var out []string
		for _, c := range rep.Checks(cfg, steady, 5*time.Second) {
			if !c.OK {
				out = append(out, c.Name)
			}
		}
		return out
	}
	if f := failed(good(), time.Second); len(f) > 0 {
		t.Fatalf("a clean run failed %v", f)
	}
	for _, tc := range []struct {
		name   string
		spoil  func(*AbuseReport)
		steady time.Duration
		want   string
	}{
		{"HonestLogin429", func(r *AbuseReport) { r.HonestRefused = []string{"op 1: 429"} }, time.Second, "logins"},
		{"ClockMoved", func(r *AbuseReport) { r.ClockViolations = []string{"eu-1: 59s ahead"} }, time.Second, "clock"},
		{"GuessesNeverLimited", func(r *AbuseReport) { r.Guesses = map[int]int{401: 120} }, time.Second, "logins"},
		{"NoClockProbe", func(r *AbuseReport) { r.ClockProbes = 0 }, time.Second, "clock"},
		{"StreamsUncapped", func(r *AbuseReport) { r.StreamMaxAccepted = 12; r.StreamOpens = map[int]int{200: 12} }, time.Second, "streams"},
		{"Lag", func(*AbuseReport) {}, 6 * time.Second, "lag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep := good()
			tc.spoil(rep)
			f := failed(rep, tc.steady)
			if len(f) != 1 || !strings.Contains(f[0], tc.want) {
				t.Errorf("failed checks = %v, want only the %s one", f, tc.want)
			}
		})
	}
}

// TestAbuseHonestLogins: an honest login refused with 429, or with 401 although the
// password was right, counts; wrong passwords of the abuse never reach the history.
func TestAbuseHonestLogins(t *testing.T) {
	a := &Abuse{rep: AbuseReport{Guesses: map[int]int{}}}
	rep := a.Report([]*Op{
		{ID: 1, Kind: OpLogin, User: "u1", Status: 201, Outcome: OK},
		{ID: 2, Kind: OpLogin, User: "u2", Status: 429, Outcome: Fail},
		{ID: 3, Kind: OpLogin, User: "u3", Status: 401, Outcome: Fail, Spurious401: true},
		{ID: 4, Kind: OpSet, User: "u1", Status: 429, Outcome: Fail},
	})
	if rep.HonestLogins != 3 || len(rep.HonestRefused) != 2 {
		t.Errorf("HonestLogins = %d, refused %v; want 3 and ops 2 and 3", rep.HonestLogins, rep.HonestRefused)
	}
}
