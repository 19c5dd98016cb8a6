package main

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/sessiond/sessiond/storage"
)

// TestCheckInChildCannotStart: where no child can be started (os.Executable fails without
// /proc, or names a binary removed meanwhile), the data file is checked in this process,
// as before the check moved to a child, and not blamed as damaged (found by an outside
// review: in a chroot without /proc, every restore failed).
func TestCheckInChildCannotStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data.db")
	db, err := storage.Open(path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	want, err := storage.Check(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func(old func() (string, error)) { executable = old }(executable)
	for name, exe := range map[string]func() (string, error){
		"NoProc":        func() (string, error) { return "", errors.New("readlink /proc/self/exe: no such file or directory") },
		"BinaryRemoved": func() (string, error) { return filepath.Join(t.TempDir(), "gone"), nil },
	} {
		t.Run(name, func(t *testing.T) {
			executable = exe
			got, err := checkInChild(path)
			if err != nil || got != want {
				t.Errorf("checkInChild = %+v, %v; want %+v", got, err, want)
			}
		})
	}
}
