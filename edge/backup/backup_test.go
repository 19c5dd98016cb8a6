package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sessiond/sessiond/crdt"
	"github.com/sessiond/sessiond/storage"
)

// source opens a data file with a few users, sessions and messages.
func source(tb testing.TB) *storage.DB {
	tb.Helper()
	db, err := storage.Open(filepath.Join(tb.TempDir(), storage.FileName), storage.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	ctx := context.Background()
	for i := range 10 {
		err := db.Update(ctx, func(tx *storage.Tx) error {
			u := fmt.Sprintf("u%d", i)
			if _, err := tx.Merge(crdt.UserKey(u), crdt.NewUser(u, "", nil, db.Clock().Next())); err != nil {
				return err
			}
			now := db.Clock().Next()
			if _, err := tx.Merge(crdt.SessionKey(fmt.Sprintf("s%d", i)), crdt.NewSession(u, time.Now().Add(time.Hour), time.Hour, now)); err != nil {
				return err
			}
			_, err := tx.Append(crdt.ConversationID("u0", "u1"), crdt.Message{From: "u0", To: "u1", Body: fmt.Sprint(i)})
			return err
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return db
}

// testSeal seals the tests' backups; trusted accepts what it sealed.
var (
	testSeal = SealKey(bytes.Repeat([]byte{7}, 32))
	trusted  = Trust{Seals: [][]byte{testSeal}}
)

// take writes a backup of db, as a node serves it.
func take(tb testing.TB, db *storage.DB) []byte {
	tb.Helper()
	var out bytes.Buffer
	var w *Writer
	_, err := db.Backup(writerFunc(func(p []byte) (int, error) { return w.Write(p) }), func(info storage.SnapshotInfo) error {
		var err error
		w, err = NewWriter(&out, Header{Node: "n1", NodeID: info.Node.String(), DataFormat: info.Format, Size: info.Size,
			Users: info.Stats.Users, Sessions: info.Stats.Sessions, Messages: info.Stats.Messages, CreatedAt: time.Now()}, testSeal)
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestRoundTrip(t *testing.T) {
	db := source(t)
	file := take(t, db)
	v, err := Verify(bytes.NewReader(file), t.TempDir(), trusted)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if h := v.Header; h.Users != 10 || h.Sessions != 10 || h.Messages != 10 || h.NodeID != db.NodeID().String() {
		t.Errorf("header %+v, want 10 users, sessions, messages of %s", h, db.NodeID())
	}

	dir := filepath.Join(t.TempDir(), "new", "data")
	res, err := Restore(bytes.NewReader(file), dir, trusted)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if res.OldID != db.NodeID() || res.NewID == db.NodeID() || res.NewID == 0 {
		t.Errorf("restored as %s from %s, want a fresh identity for %s", res.NewID, res.OldID, db.NodeID())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != storage.FileName {
		t.Errorf("data directory holds %v, want only %s", entries, storage.FileName)
	}
	restored, err := storage.Open(res.Path, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if restored.NodeID() != res.NewID {
		t.Errorf("restored node ID %s, want %s", restored.NodeID(), res.NewID)
	}
	if got, want := restored.Digest(), db.Digest(); got != want {
		t.Errorf("restored digest %x, want %x", got.Root(), want.Root())
	}

	// Two restores of one backup never share an identity.
	res2, err := Restore(bytes.NewReader(file), t.TempDir(), trusted)
	if err != nil {
		t.Fatal(err)
	}
	if res2.NewID == res.NewID {
		t.Errorf("two restores of one backup share ID %s", res.NewID)
	}
}

func TestBadFiles(t *testing.T) {
	db := source(t)
	file := take(t, db)
	headerEnd := bytes.Index(file, []byte("}")) + 1
	flipped := bytes.Clone(file)
	flipped[headerEnd+len(flipped[headerEnd:])/2] ^= 0x01
	flippedHeader := bytes.Clone(file)
	flippedHeader[bytes.Index(file, []byte(`"users":10`))+len(`"users":1`)] = '1' // users: 11
	raw := take(t, db)[headerEnd : len(file)-trailerLen]                          // a bare bbolt file
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"ErrEmpty", nil, ErrForeign},
		{"ErrForeign", []byte("hello, this is not a backup at all"), ErrForeign},
		{"ErrBareDataFile", raw, ErrForeign},
		{"ErrTruncatedHeader", file[:headerEnd-5], ErrTruncated},
		{"ErrTruncatedBody", file[:headerEnd+1000], ErrTruncated},
		{"ErrTruncatedTrailer", file[:len(file)-10], ErrTruncated},
		{"ErrNoTrailer", file[:len(file)-trailerLen], ErrTruncated},
		{"ErrFlippedBit", flipped, ErrChecksum},
		{"ErrAlteredHeader", flippedHeader, ErrChecksum},
		{"ErrTrailingBytes", append(bytes.Clone(file), 0), ErrChecksum},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(bytes.NewReader(tc.data), t.TempDir(), trusted); !errors.Is(err, tc.want) {
				t.Errorf("Verify = %v, want %v", err, tc.want)
			}
			parent := t.TempDir()
			dir := filepath.Join(parent, "data")
			if _, err := Restore(bytes.NewReader(tc.data), dir, trusted); !errors.Is(err, tc.want) {
				t.Errorf("Restore = %v, want %v", err, tc.want)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 0 {
				t.Errorf("a failed restore left %v behind", entries)
			}
			empty := t.TempDir()
			if _, err := Restore(bytes.NewReader(tc.data), empty, trusted); err == nil {
				t.Error("Restore into an existing empty directory succeeded")
			}
			if entries, _ := os.ReadDir(empty); len(entries) != 0 {
				t.Errorf("a failed restore into an empty directory left %v", entries)
			}
		})
	}
}

func TestRestoreRefusesNonEmptyDir(t *testing.T) {
	file := take(t, source(t))
	dir := t.TempDir()
	keep := filepath.Join(dir, storage.FileName)
	if err := os.WriteFile(keep, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(bytes.NewReader(file), dir, trusted); err == nil {
		t.Fatal("Restore into a non-empty directory succeeded")
	}
	if b, _ := os.ReadFile(keep); string(b) != "precious" {
		t.Errorf("the existing file was changed to %q", b)
	}
}

func TestWriterSize(t *testing.T) {
	w, err := NewWriter(io.Discard, Header{Size: 4}, testSeal)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("12345")); err == nil {
		t.Error("Write past the declared size succeeded")
	}
	if _, err := w.Write([]byte("123")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil {
		t.Error("Close before the declared size succeeded")
	}
}

// TestSeals: a file is accepted only sealed by a cluster key given, unless the caller
// accepts unsealed files; whoever can write the file but holds no key cannot alter it and
// recompute its checksum unnoticed; a file of format 1 (no seal) is unsealed.
func TestSeals(t *testing.T) {
	db := source(t)
	file := take(t, db)
	other := SealKey(bytes.Repeat([]byte{8}, 32))

	// Altered by someone without the key: header and checksum rewritten to match.
	headerEnd := bytes.Index(file, []byte("}")) + 1
	body := file[headerEnd : len(file)-trailerLen]
	forged := bytes.Replace(file[:headerEnd], []byte(`"node":"n1"`), []byte(`"node":"n2"`), 1)
	forged = append(forged, body...)
	forged = append(forged, file[len(file)-trailerLen:]...)
	sum := sha256.Sum256(forged[:len(forged)-trailerLen])
	copy(forged[len(forged)-trailerLen+16:], sum[:])

	// Format 1: version 1 and a trailer without a seal.
	v1 := bytes.Clone(file[:len(file)-trailerLen+trailerLenV1])
	binary.BigEndian.PutUint16(v1[len(headMagic):], 1)
	sum = sha256.Sum256(v1[:len(v1)-trailerLenV1])
	copy(v1[len(v1)-sha256.Size:], sum[:])

	for _, tc := range []struct {
		name   string
		data   []byte
		trust  Trust
		sealed bool
		want   error
	}{
		{"OK", file, trusted, true, nil},
		{"OKAmongKeys", file, Trust{Seals: [][]byte{other, testSeal}}, true, nil},
		{"OKUnsealedAllowed", file, Trust{Seals: [][]byte{other}, Unsealed: true}, false, nil},
		{"OKFormat1Allowed", v1, Trust{Unsealed: true}, false, nil},
		{"ErrOtherKey", file, Trust{Seals: [][]byte{other}}, false, ErrUnsealed},
		{"ErrNoKey", file, Trust{}, false, ErrUnsealed},
		{"ErrForged", forged, trusted, false, ErrUnsealed},
		{"ErrFormat1", v1, trusted, false, ErrUnsealed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Verify(bytes.NewReader(tc.data), t.TempDir(), tc.trust)
			if !errors.Is(err, tc.want) || err == nil && v.Sealed != tc.sealed {
				t.Errorf("Verify = %+v, %v; want sealed %v, %v", v.Sealed, err, tc.sealed, tc.want)
			}
			if _, err := Restore(bytes.NewReader(tc.data), filepath.Join(t.TempDir(), "d"), tc.trust); !errors.Is(err, tc.want) {
				t.Errorf("Restore = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := NewWriter(io.Discard, Header{}, nil); err == nil {
		t.Error("NewWriter without a seal key succeeded")
	}
}
