package main

import (
	"slices"
	"testing"
)

// TestKidArg: keys retire finds its KID wherever it stands among the flags, also a KID
// that begins with '-' (base64url: one in 64 does), which the flag package took for an
// unknown flag (CI met one: "flag provided but not defined: -8beZ…").
func TestKidArg(t *testing.T) {
	const dash, plain = "-8beZXmRidurVGEQWgLw5sSkI8sR8g2FHxA6HelO7hk", "O-X-f7gyc7lbmRsi_iHlFL9v7PZlpqE0Vm6PSGwmiNk"
	for _, tc := range []struct {
		args, rest []string
		kid        string
	}{
		{[]string{plain, "--http", "a:1"}, []string{"--http", "a:1"}, plain},
		{[]string{dash, "--http", "a:1", "--cluster-key-file", "k"}, []string{"--http", "a:1", "--cluster-key-file", "k"}, dash},
		{[]string{"--http", "a:1", dash}, []string{"--http", "a:1"}, dash},
		{[]string{"-http=a:1", "--json", dash}, []string{"-http=a:1", "--json"}, dash},
		{[]string{"--http", "-odd-address", dash}, []string{"--http", "-odd-address"}, dash},
		{[]string{"--http", "a:1", "--", dash}, []string{"--http", "a:1"}, dash},
		{[]string{"--http", "a:1"}, []string{"--http", "a:1"}, ""},
		{[]string{"--help"}, []string{"--help"}, ""},
	} {
		fs, _ := keysFlags("sessiond keys retire")
		kid, rest := kidArg(fs, slices.Clone(tc.args))
		if kid != tc.kid || !slices.Equal(rest, tc.rest) {
			t.Errorf("kidArg(%q) = %q, %q; want %q, %q", tc.args, kid, rest, tc.kid, tc.rest)
		}
	}
}
