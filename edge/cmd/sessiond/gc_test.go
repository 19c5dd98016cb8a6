package main

import "testing"

// TestGCSettings: GOGC 400 unless the environment sets GOGC; a soft memory limit of 90 %
// of the container's, only where there is one and nobody tuned the collector by hand.
func TestGCSettings(t *testing.T) {
	for _, tc := range []struct {
		name              string
		envGOGC, envLimit bool
		cgroup            []byte
		wantPercent       int
		wantLimit         int64
	}{
		{"NoContainer", false, false, nil, 400, 0},
		{"CgroupV2Limit", false, false, []byte("1073741824\n"), 400, 966367638},
		{"CgroupV2Unlimited", false, false, []byte("max\n"), 400, 0},
		{"CgroupV1Unlimited", false, false, []byte("9223372036854771712\n"), 400, 0},
		{"Garbage", false, false, []byte("lots"), 400, 0},
		{"Zero", false, false, []byte("0"), 400, 0},
		{"GOGCSet", true, false, []byte("1073741824"), 0, 0},
		{"GOMEMLIMITSet", false, true, []byte("1073741824"), 400, 0},
		{"BothSet", true, true, []byte("1073741824"), 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, l := gcSettings(tc.envGOGC, tc.envLimit, tc.cgroup)
			if p != tc.wantPercent || l != tc.wantLimit {
				t.Errorf("gcSettings(%v, %v, %q) = %d, %d; want %d, %d", tc.envGOGC, tc.envLimit, tc.cgroup, p, l, tc.wantPercent, tc.wantLimit)
			}
		})
	}
}
