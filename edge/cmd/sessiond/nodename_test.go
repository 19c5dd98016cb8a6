package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStableNodeName(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		recorded string // "" : no file
		given    string
		explicit bool
		want     string
		note     string // a substring of the note; "" : none
	}{
		{"FirstStartHostName", "", "host-a", false, "host-a", ""},
		{"FirstStartExplicit", "", "eu-1", true, "eu-1", ""},
		{"RestartSameName", "eu-1", "eu-1", false, "eu-1", ""},
		{"HostNameChangedKeepsRecorded", "eu-1", "3f2a9c1d77e0", false, "eu-1", `kept from`},
		{"ExplicitRename", "eu-1", "eu-9", true, "eu-9", `changed from "eu-1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if tc.recorded != "" {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, nodeNameFile), []byte(tc.recorded+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, note, err := stableNodeName(dir, tc.given, tc.explicit)
			if err != nil {
				t.Fatalf("stableNodeName: %v", err)
			}
			if got != tc.want || (tc.note == "") != (note == "") || !strings.Contains(note, tc.note) {
				t.Errorf("stableNodeName = %q, note %q; want %q, note containing %q", got, note, tc.want, tc.note)
			}
			b, err := os.ReadFile(filepath.Join(dir, nodeNameFile))
			if err != nil || strings.TrimSpace(string(b)) != tc.want {
				t.Errorf("recorded name %q (%v), want %q", b, err, tc.want)
			}
			// The next start with the host name alone keeps it.
			if again, _, err := stableNodeName(dir, "other-host", false); err != nil || again != tc.want {
				t.Errorf("restart under another host name: %q, %v; want %q", again, err, tc.want)
			}
		})
	}
	t.Run("ErrEmptyFile", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, nodeNameFile), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, _, err := stableNodeName(dir, "h", false); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("err = %v, want one about the empty file", err)
		}
	})
}
