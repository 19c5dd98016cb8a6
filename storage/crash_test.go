package storage

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/sessiond/sessiond/crdt"
)

// crashChildEnv switches the test binary into the crash test's writer: it names the
// data file to write to.
const crashChildEnv = "STORAGE_CRASH_CHILD"

// TestCrash runs a child process that writes under concurrent load and prints each
// replication key only after Update acknowledged it, kills it with SIGKILL in the middle
// of the load, and checks that every acknowledged write survived and that the file is
// consistent. It does so several times on the same file. If acknowledgement ever ran
// ahead of the commit, the writes acknowledged in the window before a kill would be
// missing.
func TestCrash(t *testing.T) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	if testing.Short() {
		t.Skip("crash test runs child processes")
	}
	path := filepath.Join(t.TempDir(), "crash.db")
	acked := map[string]bool{}
	for round := range 4 {
		got := crashRound(t, path, round, 1500+round*700)
		for _, k := range got {
			acked[k] = true
		}
		db, err := Open(path, Options{Logger: testLogger(t)})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		keys := make([]string, 0, len(acked))
		for k := range acked {
			keys = append(keys, k)
		}
		cs, err := db.Changes(context.Background(), keys)
		if err != nil {
			t.Fatalf("round %d: Changes: %v", round, err)
		}
		if len(cs) != len(keys) {
			have := map[string]bool{}
			for _, c := range cs {
				have[c.Key] = true
			}
			var lost []string
			for _, k := range keys {
				if !have[k] {
					lost = append(lost, k)
				}
			}
			t.Fatalf("round %d: %d of %d acknowledged writes lost, e.g. %q", round, len(lost), len(keys), lost[:min(5, len(lost))])
		}
		checkInvariants(t, db)
		t.Logf("round %d: %d writes acknowledged before the kill, %d in all, all present", round, len(got), len(keys))
		if err := db.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// crashRound starts the child on path, reads acknowledgements until it has at least
// killAfter of them, kills the child and returns every acknowledgement it printed.
func crashRound(t *testing.T, path string, round, killAfter int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrash$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+path, fmt.Sprintf("STORAGE_CRASH_ROUND=%d", round))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var got []string
	killed := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "ack ") {
			continue
		}
		got = append(got, strings.TrimPrefix(line, "ack "))
		if !killed && len(got) >= killAfter {
			// Lines already in the pipe were acknowledged too: keep reading to EOF.
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
	err = cmd.Wait()
	if !killed {
		t.Fatalf("round %d: child exited before the kill: %v", round, err)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: child not killed by SIGKILL: %v", round, err)
	}
	return got
}

// crashChild writes forever from 32 goroutines: records and log entries, printing each
// replication key once Update has returned nil for it.
func crashChild(path string) {
	db, err := Open(path, Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	round := os.Getenv("STORAGE_CRASH_ROUND")
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	ack := func(key string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "ack %s\n", key)
		w.Flush()
	}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := 0; ; i++ {
				var key string
				err := db.Update(context.Background(), func(tx *Tx) error {
					if g%4 == 0 {
						a, b := fmt.Sprintf("a%d", g), fmt.Sprintf("b%d", g)
						e, err := tx.Append(crdt.ConversationID(a, b), crdt.Message{From: a, To: b, Body: fmt.Sprint(i)})
						key = LogKey(crdt.ConversationID(a, b), e.ID)
						return err
					}
					key = crdt.UserKey(fmt.Sprintf("r%s-g%d-%d", round, g, i))
					var m crdt.Map
					m.Set(crdt.FieldFirstName, []byte(key), db.Clock().Next())
					_, err := tx.Merge(key, m)
					return err
				})
				if err != nil {
					fmt.Fprintln(os.Stderr, "child: Update:", err)
					os.Exit(2)
				}
				ack(key)
			}
		})
	}
	wg.Wait()
}
