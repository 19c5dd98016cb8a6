package backup

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// Verified is what Verify and Restore found in a backup file.
type Verified struct {
	Header Header
	Data   storage.SnapshotInfo // what the data file holds (storage.Check)
	// Sealed: one of Trust.Seals sealed the file. False only with Trust.Unsealed.
	Sealed bool
}

// Trust says which files Verify and Restore accept: those sealed by one of Seals
// (SealKey of the cluster's keys), and, with Unsealed, also those whose seal none of
// them checks or that have none (format 1): a file anyone who could write it may have
// altered, checked only for damage.
type Trust struct {
	Seals    [][]byte
	Unsealed bool
}

// Verify reads a whole backup file from r and checks it without restoring it: the
// trailer's length and checksum, its seal (ErrUnsealed unless trust accepts the file),
// and the data file it carries (storage.Check: it opens,
// its format is one this build opens, it has every bucket, its records decode and its
// counts match the header's). The data file is written to a temporary file in tmpDir
// (os.TempDir() if empty) for the check and removed after.
func Verify(r io.Reader, tmpDir string, trust Trust) (Verified, error) {
	f, err := os.CreateTemp(tmpDir, "sessiond-verify-*.db")
	if err != nil {
		return Verified{}, fmt.Errorf("verify: %w", err)
	}
	path := f.Name()
	defer os.Remove(path)
	v, err := unpack(r, f, trust)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return Verified{}, err
	}
	return check(v, path)
}

// unpack reads a backup file from r, writes its data file to f, syncs it, and returns the
// header once the trailer checked out and trust accepts the file.
func unpack(r io.Reader, f *os.File, trust Trust) (Verified, error) {
	br, err := NewReader(r)
	if err != nil {
		return Verified{}, err
	}
	h := br.Header()
	if h.DataFormat > storage.FormatVersion {
		return Verified{}, &storage.FormatError{Found: h.DataFormat, Supported: storage.FormatVersion}
	}
	if _, err := io.Copy(f, br); err != nil {
		return Verified{}, err
	}
	if !br.Complete() { // io.Copy hides the io.EOF that says the trailer checked out
		return Verified{}, ErrTruncated
	}
	sealed := br.SealedBy(trust.Seals)
	if !sealed && !trust.Unsealed {
		if !br.Sealed() {
			return Verified{}, fmt.Errorf("%w: it has no seal (format 1, from before seals)", ErrUnsealed)
		}
		return Verified{}, fmt.Errorf("%w: sealed under a cluster key not given, or altered since", ErrUnsealed)
	}
	if err := f.Sync(); err != nil {
		return Verified{}, err
	}
	return Verified{Header: h, Sealed: sealed}, nil
}

// CheckDataFile checks the data file Verify and Restore unpack: storage.Check, unless a
// program sets it before it calls them. bbolt's consistency check trusts the pages of the
// file, and on a damaged or altered one it can crash the process (it panics in a goroutine
// of its own, which nothing can recover), so a program that checks files it did not write
// runs the check in a process of its own: sessiond's command line does.
var CheckDataFile = storage.Check

// check runs CheckDataFile on the unpacked data file and compares it with the header.
func check(v Verified, path string) (Verified, error) {
	info, err := CheckDataFile(path)
	if err != nil {
		return Verified{}, fmt.Errorf("the data file in the backup: %w", err)
	}
	h := v.Header
	if info.Stats != (storage.Stats{Users: h.Users, Sessions: h.Sessions, Messages: h.Messages}) || info.Node.String() != h.NodeID {
		return Verified{}, fmt.Errorf("%w: the data file holds %+v of node %s, the header says %d users, %d sessions, %d messages of node %s",
			ErrChecksum, info.Stats, info.Node, h.Users, h.Sessions, h.Messages, h.NodeID)
	}
	v.Data = info
	return v, nil
}

// Restored is the result of Restore.
type Restored struct {
	Verified
	Path  string      // the data file written
	OldID crdt.NodeID // the identity of the node the backup came from
	NewID crdt.NodeID // the restored copy's fresh identity
}

// Restore writes the data file of the backup read from r, if trust accepts it (see
// Verify), into dir, an empty or new directory, under a fresh node identity (storage.Reidentify), so that a node started on
// dir never poses as the node the backup came from. It writes to a temporary file in
// dir, verifies it as Verify does, gives it its new identity and only then renames it to
// storage.FileName and syncs dir: a truncated, corrupt or foreign file leaves nothing
// behind (dir is removed again if Restore created it). The rest of a data directory —
// the cluster key a lone node generates, the membership snapshot — is not in a backup:
// the node starts with the cluster's key file and joins as a new member.
func Restore(r io.Reader, dir string, trust Trust) (res Restored, err error) {
	created, err := prepareDir(dir)
	if err != nil {
		return Restored{}, err
	}
	f, err := os.CreateTemp(dir, ".restore-*.db")
	if err != nil {
		return Restored{}, fmt.Errorf("restore: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
			if created {
				_ = os.Remove(dir)
			}
		}
	}()
	v, err := unpack(r, f, trust)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return Restored{}, err
	}
	if v, err = check(v, tmp); err != nil {
		return Restored{}, err
	}
	old, fresh, err := storage.Reidentify(tmp)
	if err != nil {
		return Restored{}, err
	}
	path := filepath.Join(dir, storage.FileName)
	if err := os.Rename(tmp, path); err != nil {
		return Restored{}, fmt.Errorf("restore: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return Restored{}, fmt.Errorf("restore: %w", err)
	}
	return Restored{Verified: v, Path: path, OldID: old, NewID: fresh}, nil
}

// prepareDir creates dir if it does not exist, or checks that it is empty. It reports
// whether it created it.
func prepareDir(dir string) (bool, error) {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return false, fmt.Errorf("restore: create data directory: %w", err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("restore: data directory: %w", err)
	case len(entries) > 0:
		return false, fmt.Errorf("restore: data directory %s is not empty (it holds %s): restore writes only into an empty or new directory", dir, entries[0].Name())
	}
	return false, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir) // #nosec G304 -- the operator's data directory
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
