package edge

import (
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/sessiond/sessiond/functions"
	"github.com/sessiond/sessiond/storage"
)

// TestStorageRefusal: a failed storage and a full disk are no fault of the request: 503
// unavailable, saying which, where they used to be 500 internal.
func TestStorageRefusal(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code string
	}{
		{"Failed", fmt.Errorf("commit: %w", fmt.Errorf("%w: %w", storage.ErrFailed, syscall.EIO)), functions.EUnavailable},
		{"DiskFull", fmt.Errorf("write-ahead log: %w", syscall.ENOSPC), functions.EUnavailable},
		{"Other", errors.New("a bug"), functions.EInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := storageRefusal(tc.err, functions.EInternal, "internal error")
			if code != tc.code || statusOf[code] == 0 {
				t.Errorf("code %q (status %d), want %q", code, statusOf[code], tc.code)
			}
			if code == functions.EUnavailable && msg == "internal error" {
				t.Errorf("no message says why")
			}
		})
	}
}
