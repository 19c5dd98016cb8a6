package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sessiond/sessiond/edge/api"
)

const keysUsage = `Usage:
  sessiond keys rotate --http ADDR [--after DURATION] [--retire KID]
                                                        start signing session tokens with a new key
  sessiond keys list --http ADDR [--json]               list the signing keys the node at ADDR knows
  sessiond keys retire KID --http ADDR                  retire a replaced key at once (a leaked key)

Session tokens are signed with Ed25519 keys (EdDSA) that every node holds and that any
backend can verify with the public keys GET /.well-known/jwks.json publishes. A rotation
creates a new key cluster-wide through the node at ADDR: it is published at once and
starts signing after --after on every node (default 5m, the key set's max-age, so that
verifiers that cache the set fetch the new key before they meet a token it signed); the
keys it replaces keep verifying until the last token they signed has expired
(--session-ttl, or an app's longer session ttl, which the key's record keeps) and then
leave the key set. The new key's kid is
printed alone on the last line. Retiring a key that a newer one replaced ends it at once
on every node: its tokens stop verifying (their users sign in again) and it leaves the
key set. To end a leaked key that signs now, rotate with --after 0 --retire KID (the
leaked key's kid, as keys list shows it): the new key signs at once and the leaked one is
retired in the same write. At most 32 keys verify at once: a rotation beyond that is
refused until one retires, by itself or by sessiond keys retire (a rotation with --retire
makes its own room); and at most 32 keys are created in 24 hours, 64 for a rotation with
--retire of a key that verifies (key records are kept for good, and a node reads at most
4,096).

The request is signed with the cluster key: give --cluster-key-file (or
SESSIOND_CLUSTER_KEY_FILE, or the key itself in SESSIOND_CLUSTER_KEY), as to the node.
See docs/OPERATIONS.md, "Rotating the signing key".

Flags:
`

// keysCmd runs `sessiond keys rotate|list`: admin requests to a running node.
func keysCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		w, code := stdout, 0
		if len(args) == 0 {
			w, code = stderr, 2
		}
		fmt.Fprint(w, keysUsage)
		fs, _ := keysFlags("sessiond keys")
		fs.SetOutput(w)
		fs.PrintDefaults()
		return code
	}
	switch args[0] {
	case "rotate":
		return keysRotate(args[1:], stdout, stderr)
	case "list":
		return keysList(args[1:], stdout, stderr)
	case "retire":
		return keysRetire(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "sessiond keys: unknown command %q: want rotate, list or retire (sessiond keys --help)\n", args[0])
	return 2
}

// keysOptions are the flags of the keys commands.
type keysOptions struct {
	addr, keyFile *string
	after         *time.Duration
	retire        *string
	asJSON        *bool
}

// keysFlags returns the flags of the keys commands.
func keysFlags(name string) (*flag.FlagSet, keysOptions) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs, keysOptions{
		addr:    fs.String("http", "127.0.0.1:8080", "the node's API: `ADDR` (host:port) or URL (http[s]://host:port)"),
		keyFile: fs.String("cluster-key-file", "", "`FILE` with the cluster key (the node's --cluster-key-file)"),
		after:   fs.Duration("after", api.RotateDefaultAfter*time.Second, "rotate: the new key starts signing this long after it is published, `DURATION` (0 to 24h)"),
		retire:  fs.String("retire", "", "rotate: with --after 0, also retire the signing key `KID` (a leaked one) in the same write: its tokens stop verifying"),
		asJSON:  fs.Bool("json", false, "list: print the node's answer as JSON"),
	}
}

// keysRequest sends a signed admin request to the node at addr and decodes its answer.
func keysRequest(addr, keyFile, method, path string, body, out any) error {
	target, err := nodeURL(addr, path)
	if err != nil {
		return err
	}
	keys, err := readClusterKeys(keyFile)
	if err == nil && len(keys) == 0 {
		err = errors.New("no cluster key: give --cluster-key-file or SESSIOND_CLUSTER_KEY (a lone node keeps its key in DATA/cluster.key)")
	}
	if err != nil {
		return err
	}
	var raw []byte
	if body != nil {
		if raw, err = json.Marshal(body); err != nil {
			return err
		}
	}
	resp, err := doAdmin(&http.Client{Timeout: 30 * time.Second}, keys[0], method, target, raw)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nodeError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the node's answer: %w", err)
	}
	return nil
}

func keysRotate(args []string, stdout, stderr io.Writer) int {
	fs, o := keysFlags("sessiond keys rotate")
	if code, done := parseCmd(fs, args, stdout, stderr, keysUsage, "http", "cluster-key-file"); done {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sessiond keys rotate: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	after := *o.after
	if after < 0 || after > api.MaxRotateAfter*time.Second || after%time.Second != 0 {
		fmt.Fprintln(stderr, "sessiond keys rotate: --after must be whole seconds from 0 to 24h")
		return 2
	}
	if *o.retire != "" && after != 0 {
		fmt.Fprintln(stderr, "sessiond keys rotate: --retire needs --after 0 (the new key signs at once, the retired one ends at once)")
		return 2
	}
	secs := int64(after / time.Second)
	var out api.RotateKeyResponse
	req := api.RotateKeyRequest{AfterSeconds: &secs, Retire: *o.retire}
	if err := keysRequest(*o.addr, *o.keyFile, http.MethodPost, "/v1/admin/keys/rotate", req, &out); err != nil {
		fmt.Fprintln(stderr, "sessiond keys rotate:", err)
		return 1
	}
	k := out.Key
	when := "at once"
	if d := k.SignsFrom.Sub(k.CreatedAt); d > 0 {
		when = "from " + k.SignsFrom.Format(time.RFC3339) + " (in " + d.Round(time.Second).String() + ")"
	}
	fmt.Fprintf(stdout, "new signing key published; every node signs with it %s. The keys it replaces verify until their last token expires.\n", when)
	if r := out.Retired; r != nil {
		fmt.Fprintf(stdout, "signing key %s is %s: its tokens no longer verify on any node the record reaches.\n", r.KID, r.Status)
	}
	fmt.Fprintln(stdout, k.KID)
	return 0
}

func keysRetire(args []string, stdout, stderr io.Writer) int {
	fs, o := keysFlags("sessiond keys retire")
	kid, args := kidArg(fs, args)
	if code, done := parseCmd(fs, args, stdout, stderr, keysUsage, "http", "cluster-key-file"); done {
		return code
	}
	if kid == "" && fs.NArg() == 1 {
		kid = fs.Arg(0)
	} else if kid == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sessiond keys retire: want one KID (sessiond keys list shows them)")
		return 2
	}
	var out api.RotateKeyResponse
	if err := keysRequest(*o.addr, *o.keyFile, http.MethodPost, "/v1/admin/keys/"+url.PathEscape(kid)+"/retire", nil, &out); err != nil {
		fmt.Fprintln(stderr, "sessiond keys retire:", err)
		return 1
	}
	fmt.Fprintf(stdout, "signing key %s is %s: its tokens no longer verify on any node the record reaches.\n", out.Key.KID, out.Key.Status)
	return 0
}

// kidArg takes the KID out of keys retire's arguments, wherever it stands among the
// flags: the first argument that is neither a flag of fs nor a flag's value. A KID is
// base64url, so one in 64 begins with '-', which the flag package would take for an
// unknown flag (CI met one). It returns "" and args as they are when there is none.
func kidArg(fs *flag.FlagSet, args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" { // the flag package's end of flags: the KID follows, if any
			if i+1 < len(args) {
				return args[i+1], slices.Concat(args[:i], args[i+2:])
			}
			return "", args
		}
		if a == "-" || !strings.HasPrefix(a, "-") {
			return a, slices.Concat(args[:i], args[i+1:])
		}
		name, _, inline := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-"), "=")
		if name == "h" || name == "help" { // the flag package's own
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			return a, slices.Concat(args[:i], args[i+1:])
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !inline && !(ok && b.IsBoolFlag()) {
			i++ // the flag's value
		}
	}
	return "", args
}

func keysList(args []string, stdout, stderr io.Writer) int {
	fs, o := keysFlags("sessiond keys list")
	if code, done := parseCmd(fs, args, stdout, stderr, keysUsage, "http", "cluster-key-file"); done {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sessiond keys list: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	var out api.SigningKeys
	if err := keysRequest(*o.addr, *o.keyFile, http.MethodGet, "/v1/admin/keys", nil, &out); err != nil {
		fmt.Fprintln(stderr, "sessiond keys list:", err)
		return 1
	}
	if *o.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return 0
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KID\tSTATUS\tCREATED\tSIGNS FROM\tRETIRES\tPRIVATE KEY HERE")
	for _, k := range out.Keys {
		retires := "-"
		if k.RetiresAt != nil {
			retires = k.RetiresAt.Format(time.RFC3339)
		}
		private := "no"
		if k.Private {
			private = fmt.Sprintf("yes (sealed under %d cluster keys)", k.Sealings)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.KID, k.Status, k.CreatedAt.Format(time.RFC3339), k.SignsFrom.Format(time.RFC3339), retires, private)
	}
	_ = tw.Flush()
	line := "this node issues " + out.Alg + " tokens"
	if out.Note != "" {
		line += ": " + out.Note
	}
	fmt.Fprintln(stdout, line)
	return 0
}
