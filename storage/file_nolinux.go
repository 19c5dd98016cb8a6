//go:build !linux

package storage

import "os"

// preallocate does nothing here: records are appended.
func preallocate(*os.File, int64, int64) error { return nil }
