//go:build linux

// Package disktest gives tests a small file system of their own to fill up: a tmpfs
// mounted for the test (which needs the right to mount one: root), and a way to take all
// of its room.
package disktest

import (
	"errors"
	"os"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size (as mount takes it: "24m") on a fresh directory and
// returns the directory; it is unmounted when the test ends. It skips the test if the
// mount is refused.
func Mount(tb testing.TB, size string) string {
	tb.Helper()
	dir := tb.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		tb.Skipf("needs a small file system of its own (mounting a tmpfs: %v)", err)
	}
	tb.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// Fill writes path until the file system it is on has no room left.
func Fill(tb testing.TB, path string) {
	tb.Helper()
	f, err := os.Create(path) // #nosec G304 -- the test's own file
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	for _, size := range []int{1 << 20, 4096} { // then what is left of the last MiB
		chunk := make([]byte, size)
		for {
			if _, err := f.Write(chunk); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					tb.Fatal(err)
				}
				break
			}
		}
	}
}
