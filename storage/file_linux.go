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
