package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/sessiond/sessiond/edge/backup"
	"github.com/sessiond/sessiond/storage"
)

// checkDataFileCmd is the hidden `sessiond backup` command that checkInChild runs.
const checkDataFileCmd = "check-data-file"

// checkInChild is backup.CheckDataFile for verify and restore: storage.Check, run in a
// process of its own (this binary, checkDataFileCmd), so that a damaged or altered file
// that crashes bbolt's check (see backup.CheckDataFile) ends in an error, not in the
// command's death. Where no child can be started (no /proc to find this binary by, or
// the binary replaced meanwhile) it checks in this process, as earlier releases did.
func checkInChild(path string) (storage.SnapshotInfo, error) {
	exe, err := executable()
	if err != nil {
		return storage.Check(path)
	}
	cmd := exec.Command(exe, "backup", checkDataFileCmd, path) // #nosec G204 -- this binary, its own command
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		var info storage.SnapshotInfo
		if err := json.Unmarshal(out.Bytes(), &info); err != nil {
			return storage.SnapshotInfo{}, fmt.Errorf("check the data file: %w", err)
		}
		return info, nil
	case !errors.As(err, &exit): // not started
		return storage.Check(path)
	case exit.ExitCode() == 1:
		return storage.SnapshotInfo{}, errors.New(strings.TrimSpace(errs.String()))
	}
	first, _, _ := strings.Cut(strings.TrimSpace(errs.String()), "\n")
	return storage.SnapshotInfo{}, fmt.Errorf("checking it crashed (%v: %s): a damaged or altered file", err, first)
}

// executable is os.Executable, which checkInChild starts; a variable for its test.
var executable = os.Executable

// checkDataFile runs storage.Check on path for checkInChild: what it holds as JSON on
// stdout and exit 0, or the error on stderr and exit 1.
func checkDataFile(path string, stdout, stderr io.Writer) int {
	info, err := storage.Check(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if err := json.NewEncoder(stdout).Encode(info); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

const backupUsage = `Usage:
  sessiond backup --http ADDR --out FILE [--force] [--unsealed]
                                                     take a backup of the running node at ADDR
  sessiond backup verify FILE [--unsealed]           check a backup file without restoring it

A backup is a consistent copy of the node's data taken while it serves, streamed to FILE
("-" for stdout) with a checksum, and sealed by the node with its cluster key (an HMAC),
so that whoever can write where backups are kept, but holds no cluster key, cannot alter
one unnoticed. The request is signed with the cluster key: give --cluster-key-file (or
SESSIOND_CLUSTER_KEY_FILE, or the key itself in SESSIOND_CLUSTER_KEY), as to the node; a
lone node started without one keeps its key in DATA/cluster.key (keep a copy of it with
the backups' secrets: without it a lone node's backup's seal cannot be checked). verify
and restore check the seal with the keys given, and refuse a file no key given sealed
unless --unsealed (then only damage is checked). Restore with sessiond restore --from
FILE --data DIR.

Flags:
`

// backupCmd runs `sessiond backup`: it fetches a backup file from a node's admin route,
// checks it as it streams, and writes it to a file (through a temporary file renamed
// only once the whole backup checked out) or stdout.
func backupCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "verify" {
		return verifyCmd(args[1:], stdout, stderr)
	}
	if len(args) == 2 && args[0] == checkDataFileCmd {
		return checkDataFile(args[1], stdout, stderr)
	}
	fs := flag.NewFlagSet("sessiond backup", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr := fs.String("http", "127.0.0.1:8080", "the node's API: `ADDR` (host:port) or URL (http[s]://host:port)")
	out := fs.String("out", "", "`FILE` to write the backup to; - for stdout")
	force := fs.Bool("force", false, "overwrite FILE if it exists")
	keyFile := fs.String("cluster-key-file", "", "`FILE` with the cluster key (the node's --cluster-key-file)")
	timeout := fs.Duration("timeout", 0, "give up after `DURATION`; 0: never")
	unsealed := fs.Bool("unsealed", false, "keep a backup without a seal (from a node of a release before seals); without it such a backup is refused")
	if code, done := parseCmd(fs, args, stdout, stderr, backupUsage, "http", "cluster-key-file"); done {
		return code
	}
	if *out == "" {
		fmt.Fprintln(stderr, "sessiond backup: --out FILE is required (- for stdout)")
		return 2
	}
	target, err := nodeURL(*addr, "/v1/admin/backup")
	if err != nil {
		fmt.Fprintln(stderr, "sessiond backup:", err)
		return 2
	}
	keys, err := readClusterKeys(*keyFile)
	if err == nil && len(keys) == 0 {
		err = errors.New("no cluster key: give --cluster-key-file or SESSIOND_CLUSTER_KEY (a lone node keeps its key in DATA/cluster.key)")
	}
	if err != nil {
		fmt.Fprintln(stderr, "sessiond backup:", err)
		return 2
	}
	toStdout := *out == "-"
	if !toStdout && !*force {
		if _, err := os.Stat(*out); err == nil {
			fmt.Fprintf(stderr, "sessiond backup: %s exists: give --force to overwrite it\n", *out)
			return 1
		}
	}
	start := time.Now()
	res, err := fetchBackup(target, keys, *unsealed, *out, *timeout, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond backup:", err)
		return 1
	}
	summary := stdout
	if toStdout {
		summary = stderr
	}
	h := res.Header()
	el := time.Since(start)
	fmt.Fprintf(summary, "backup of %s (region %s, node id %s, taken %s): %s in %s (%s/s); %d users, %d sessions, %d messages → %s\n",
		h.Node, h.Region, h.NodeID, h.CreatedAt.Format(time.RFC3339), mb(res.bytes), el.Round(time.Millisecond),
		mb(int64(float64(res.bytes)/max(el.Seconds(), 1e-3))), h.Users, h.Sessions, h.Messages, *out)
	return 0
}

// fetched is a backup fetched: its reader (for the header) and the bytes of the file.
type fetched struct {
	*backup.Reader
	bytes int64
}

// fetchBackup streams the backup at target to out, checking it as it goes: a backup
// sealed with none of keys (a stale key file, or a stream altered on its way) is refused,
// and so is one without a seal (a node from before seals, or a seal stripped on the way)
// unless unsealed; a refused backup leaves no file (to stdout, its bytes are written
// already: the exit status says).
func fetchBackup(target string, keys [][]byte, unsealed bool, out string, timeout time.Duration, stdout, stderr io.Writer) (fetched, error) {
	hc := &http.Client{Timeout: timeout}
	resp, err := doAdmin(hc, keys[0], http.MethodGet, target, nil)
	if err != nil {
		return fetched{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fetched{}, nodeError(resp)
	}
	var (
		w    io.Writer
		tmp  *os.File
		done bool
	)
	if out == "-" {
		w = stdout
	} else {
		tmp, err = os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
		if err != nil {
			return fetched{}, err
		}
		defer func() {
			if !done { // a failed backup leaves nothing behind
				_ = tmp.Close()
				_ = os.Remove(tmp.Name())
			}
		}()
		w = tmp
	}
	cw := &countingWriter{w: w}
	br, err := backup.NewReader(io.TeeReader(resp.Body, cw))
	if err != nil {
		return fetched{}, fmt.Errorf("from the node: %w", err)
	}
	prog := newProgress(stderr, br.Header().Size)
	_, err = io.Copy(prog, br)
	prog.end()
	if err != nil {
		return fetched{}, fmt.Errorf("after %s: %w", mb(cw.n), err)
	}
	if !br.Complete() {
		return fetched{}, backup.ErrTruncated
	}
	kept := "nothing kept"
	if tmp == nil {
		kept = "what was written to stdout is not a backup to trust"
	}
	switch {
	case br.Sealed() && !br.SealedBy(sealKeys(keys)):
		return fetched{}, fmt.Errorf("%w: sealed under a cluster key not in your key file, or altered on its way; %s", backup.ErrUnsealed, kept)
	case !br.Sealed() && !unsealed:
		return fetched{}, fmt.Errorf("%w: it has no seal: the node runs a release from before sealed backups (take it with --unsealed, or upgrade the node), or the seal was stripped on its way; %s", backup.ErrUnsealed, kept)
	}
	if tmp != nil {
		if err := tmp.Sync(); err != nil {
			return fetched{}, err
		}
		if err := tmp.Close(); err != nil {
			return fetched{}, err
		}
		if err := os.Rename(tmp.Name(), out); err != nil {
			return fetched{}, err
		}
		done = true
	}
	return fetched{Reader: br, bytes: cw.n}, nil
}

// nodeError turns a node's JSON error reply into an error.
func nodeError(resp *http.Response) error {
	var e struct {
		Error struct{ Code, Message string }
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) == nil && e.Error.Code != "" {
		return fmt.Errorf("the node answered %d %s: %s", resp.StatusCode, e.Error.Code, e.Error.Message)
	}
	return fmt.Errorf("the node answered %s", resp.Status)
}

func verifyCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessiond backup verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	keyFile, unsealed := trustFlags(fs)
	const usage = "Usage: sessiond backup verify FILE (- for stdin) [flags]: check a backup file without restoring it;\nexit 0 if it is complete, undamaged, sealed with one of the cluster keys given (or, with --unsealed,\nwhatever its seal) and holds a data file this build opens\n\nFlags:\n"
	files, code, done := parseArgs(fs, args, stdout, stderr, usage, "cluster-key-file")
	if done {
		return code
	}
	if len(files) != 1 {
		fmt.Fprintln(stderr, "sessiond backup verify: want one FILE (- for stdin)")
		return 2
	}
	trust, err := backupTrust(*keyFile, *unsealed)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond backup verify:", err)
		return 2
	}
	file := files[0]
	r, closeFn, err := openInput(file)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond backup verify:", err)
		return 1
	}
	defer closeFn()
	backup.CheckDataFile = checkInChild
	v, err := backup.Verify(r, "", trust)
	if err != nil {
		fmt.Fprintf(stderr, "sessiond backup verify: %s: %v\n", file, err)
		return 1
	}
	h := v.Header
	fmt.Fprintf(stdout, "ok: backup of %s (region %s, node id %s, %s) taken %s; data format %d, %s; %d users, %d sessions, %d messages; %s\n",
		h.Node, h.Region, h.NodeID, h.Version, h.CreatedAt.Format(time.RFC3339), h.DataFormat, mb(h.Size), h.Users, h.Sessions, h.Messages, sealText(v.Sealed))
	return 0
}

// trustFlags adds the flags that say which backups verify and restore accept.
func trustFlags(fs *flag.FlagSet) (keyFile *string, unsealed *bool) {
	keyFile = fs.String("cluster-key-file", "", "`FILE` with the cluster keys (the nodes' --cluster-key-file): a backup sealed with none of them is refused")
	unsealed = fs.Bool("unsealed", false, "accept a backup no key given sealed, or one from before seals: only its damage is checked, not who wrote it")
	return keyFile, unsealed
}

// backupTrust reads the keys of --cluster-key-file (or the environment's) for verify and
// restore; without any, only --unsealed lets a backup through.
func backupTrust(keyFile string, unsealed bool) (backup.Trust, error) {
	keys, err := readClusterKeys(keyFile)
	if err != nil {
		return backup.Trust{}, err
	}
	if len(keys) == 0 && !unsealed {
		return backup.Trust{}, errors.New("no cluster key to check the backup's seal with: give --cluster-key-file (or SESSIOND_CLUSTER_KEY), or --unsealed to check only for damage")
	}
	return backup.Trust{Seals: sealKeys(keys), Unsealed: unsealed}, nil
}

// sealKeys returns the seal keys of cluster keys.
func sealKeys(keys [][]byte) [][]byte {
	seals := make([][]byte, len(keys))
	for i, k := range keys {
		seals[i] = backup.SealKey(k)
	}
	return seals
}

func sealText(sealed bool) string {
	if sealed {
		return "sealed with the cluster key"
	}
	return "NOT checked for a seal (--unsealed): undamaged, but anyone who could write it may have altered it"
}

const restoreUsage = `Usage: sessiond restore --from FILE --data DIR --cluster-key-file KEYS [--unsealed]

Writes the data file of a backup (sessiond backup) into DIR, an empty or new directory,
under a fresh node identity: the restored node never poses as the node the backup came
from. The backup is checked first (checksum, its seal with one of the cluster keys given,
the data file opens, its counts); a truncated, corrupt, foreign or unsealed file writes
nothing (--unsealed accepts a file no key given sealed, or one from before seals,
checking only its damage). Start the node on DIR with the
cluster's key file: alone (the cluster was lost), or joining the cluster, which brings it
what was written after the backup.

Flags:
`

// restoreCmd runs `sessiond restore`.
func restoreCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sessiond restore", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	from := fs.String("from", "", "backup `FILE` to restore; - for stdin")
	data := fs.String("data", "", "`DIR` to write the data directory to: empty or new")
	keyFile, unsealed := trustFlags(fs)
	if code, done := parseCmd(fs, args, stdout, stderr, restoreUsage, "data", "cluster-key-file"); done {
		return code
	}
	if *from == "" || *data == "" {
		fmt.Fprintln(stderr, "sessiond restore: --from FILE and --data DIR are required")
		return 2
	}
	trust, err := backupTrust(*keyFile, *unsealed)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond restore:", err)
		return 2
	}
	r, closeFn, err := openInput(*from)
	if err != nil {
		fmt.Fprintln(stderr, "sessiond restore:", err)
		return 1
	}
	defer closeFn()
	backup.CheckDataFile = checkInChild
	res, err := backup.Restore(r, *data, trust)
	if err != nil {
		fmt.Fprintf(stderr, "sessiond restore: %s: %v (nothing written)\n", *from, err)
		return 1
	}
	h := res.Header
	fmt.Fprintf(stdout, "restored the backup of %s (node id %s, taken %s) into %s as node id %s: %s; %d users, %d sessions, %d messages; %s\n",
		h.Node, res.OldID, h.CreatedAt.Format(time.RFC3339), res.Path, res.NewID, mb(h.Size), h.Users, h.Sessions, h.Messages, sealText(res.Sealed))
	return 0
}

// parseArgs is parseCmd for a subcommand whose arguments may come before, between or
// after its flags: it returns them in order (the environment is read once: the command
// line wins).
func parseArgs(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, usage string, env ...string) (pos []string, code int, done bool) {
	for {
		if code, done := parseCmd(fs, args, stdout, stderr, usage, env...); done {
			return nil, code, true
		}
		env = nil
		if fs.NArg() == 0 {
			return pos, 0, false
		}
		pos, args = append(pos, fs.Arg(0)), fs.Args()[1:]
	}
}

// parseCmd parses a subcommand's flags, after the environment for the flags named in
// env (SESSIOND_<NAME>). It prints the usage for --help and the error for a bad flag;
// done says the command should exit with code.
func parseCmd(fs *flag.FlagSet, args []string, stdout, stderr io.Writer, usage string, env ...string) (code int, done bool) {
	for _, name := range env {
		if name == "" {
			continue
		}
		if v, ok := os.LookupEnv(envName(name)); ok {
			if err := fs.Set(name, v); err != nil {
				fmt.Fprintf(stderr, "%s: %s=%q: %v\n", fs.Name(), envName(name), v, err)
				return 2, true
			}
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0, true
		}
		fmt.Fprintf(stderr, "%s: %v (%s --help)\n", fs.Name(), err, fs.Name())
		return 2, true
	}
	return 0, false
}

// openInput opens a file, or stdin for "-".
func openInput(name string) (io.Reader, func(), error) {
	if name == "-" {
		return os.Stdin, func() {}, nil
	}
	f, err := os.Open(name) // #nosec G304 -- the operator names the file
	if err != nil {
		return nil, nil, err
	}
	return f, func() { _ = f.Close() }, nil // read only: nothing to lose
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// mb formats a byte count in MB (10^6 bytes), or kB below 1 MB.
func mb(n int64) string {
	if n < 1e6 {
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// progress draws one updating line on a terminal; it writes nothing when w is not one.
type progress struct {
	w     io.Writer // nil: not a terminal
	total int64
	n     int64
	start time.Time
	last  time.Time
}

func newProgress(w io.Writer, total int64) *progress {
	p := &progress{total: total, start: time.Now()}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.w = w
		}
	}
	return p
}

func (p *progress) Write(b []byte) (int, error) {
	p.n += int64(len(b))
	if p.w != nil && time.Since(p.last) >= 200*time.Millisecond {
		p.last = time.Now()
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.n) / float64(p.total)
	}
	rate := float64(p.n) / max(time.Since(p.start).Seconds(), 1e-3)
	fmt.Fprintf(p.w, "\r%s of %s  %3.0f%%  %s/s   ", mb(p.n), mb(p.total), pct, mb(int64(rate)))
}

// end draws the final state and ends the line.
func (p *progress) end() {
	if p.w != nil {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
