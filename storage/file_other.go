//go:build !unix

package storage

import (
	"os"
	"time"
)

// lockFile takes no lock of its own here: bbolt's Open takes it, after recovery.
func lockFile(*os.File, time.Duration) (bool, error) { return true, nil }
