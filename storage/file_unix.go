//go:build unix

package storage

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// lockFile takes f's exclusive lock the way bbolt does (flock), waiting up to timeout.
// bbolt, handed the same open file, finds the lock already held by it and takes it
// again at once, so the lock is never released between recovery and bbolt's Open.
func lockFile(f *os.File, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) // #nosec G115 -- a file descriptor
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return false, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		// Another process holds the file; bbolt polls the same way.
		time.Sleep(50 * time.Millisecond)
	}
}
