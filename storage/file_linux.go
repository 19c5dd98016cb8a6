package storage

import (
	"errors"
	"os"
	"syscall"
)

// fdatasync flushes f's data and the metadata needed to read it back (its size), as
// bbolt does for its own file.
func fdatasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd())) // #nosec G115 -- a file descriptor
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// preallocate allocates n bytes of f from off on, extending its size: a log record
// written into them changes no file size, so its fdatasync need not wait for a journal
// commit of the file's metadata (measured here: 120 µs instead of 150–350 µs).
func preallocate(f *os.File, off, n int64) error {
	return syscall.Fallocate(int(f.Fd()), 0, off, n) // #nosec G115 -- a file descriptor
}
