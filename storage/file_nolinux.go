//go:build !linux

package storage

import "os"

// fdatasync is a full sync here (on macOS Go's Sync is F_FULLFSYNC).
func fdatasync(f *os.File) error { return f.Sync() }
