//go:build !unix

package storage

import (
	"os"
	"time"
)

func fdatasync(f *os.File) error { return f.Sync() }

// lockFile takes no lock of its own here: bbolt's Open takes it, after recovery.
func lockFile(*os.File, time.Duration) (bool, error) { return true, nil }
