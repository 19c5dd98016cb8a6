package storage

import (
	"os"
	"syscall"
)

// preallocate allocates n bytes of f from off on, extending its size: a log record
// written into them changes no file size, so its fdatasync need not wait for a journal
// commit of the file's metadata (measured here: 120 µs instead of 150–350 µs).
func preallocate(f *os.File, off, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0, off, n) // #nosec G115 -- a file descriptor
}
