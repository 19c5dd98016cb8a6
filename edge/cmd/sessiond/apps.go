package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/sessiond/sessiond/edge/api"
	"github.com/sessiond/sessiond/functions"
)

const appsUsage = `Usage:
  sessiond apps create NAME [flags]   create an app; print its API key, once, on the last line
  sessiond apps list [flags]          list the apps, revoked ones included, with what each
                                      stores (about, cluster-wide: what --app-quota bounds)
  sessiond apps rotate NAME [flags]   give an app a new key, printed once on the last line;
                                      its older keys stop working after --grace
                                      (--end-sessions: and end its subjects' sessions)
  sessiond apps revoke NAME [flags]   revoke an app: its keys stop working on every node
  sessiond apps end-sessions NAME [flags]
                                      end every session the app has made so far, for any
                                      subject: their tokens stop working on every node
  sessiond apps quota NAME MIB|none|default [flags]
                                      give an app its own bound on what it stores, in MiB
                                      (0: it may add nothing; none: no bound), in place of
                                      the nodes' --app-quota; default: the nodes' again

An app (a website's backend, say) calls the service API (/v1/service/, docs/API.md) with
Authorization: Bearer <API key>. The node keeps only a hash of the key: keep the key in
your app's secret store. NAME is 2–32 characters of a-z, 0-9 and '-' (not first); a
revoked app keeps its name, which is never given to another app. Rotate a key that
may have leaked, or on a schedule: the new key opens the same subjects and sessions; put
it in your app's secret store within the grace (--grace 0 retires the old keys at once;
a later rotation's shorter grace also ends the keys an earlier one left working).
Whoever held a leaked key may have made sessions for any subject, which a rotation or a
revocation leaves working until they expire (up to a year): after a leak, rotate with
--grace 0 --end-sessions (or run end-sessions after a revoke). Sessions made after the
end are not affected; the app's users sign in again.

These commands talk to a running node (--http) and sign their requests with the cluster
key: give --cluster-key-file (or SESSIOND_CLUSTER_KEY_FILE, or the key itself in
SESSIOND_CLUSTER_KEY), as to the node; a lone node started without one keeps its key in
DATA/cluster.key. What one node records reaches the others by replication: a key works on
every node at once (it carries the bookmark of its creation).

Flags:
`

// appsCmd runs `sessiond apps`.
func appsCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fs, _, _, _, _, _ := appsFlags()
		if len(args) == 0 {
			fmt.Fprint(stderr, "sessiond apps: want create, list, rotate, revoke, end-sessions or quota\n\n", appsUsage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return 2
		}
		fmt.Fprint(stdout, appsUsage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return 0
	}
	sub, args := args[0], args[1:]
	fs, addr, keyFile, asJSON, grace, endSessions := appsFlags()
	fs.Init("sessiond apps "+sub, flag.ContinueOnError)
	pos, code, done := parseArgs(fs, args, stdout, stderr, appsUsage, "http", "cluster-key-file")
	if done {
		return code
	}
	var (
		method, path string
		body         []byte
	)
	if sub != "rotate" {
		var misplaced string
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "grace" || f.Name == "end-sessions" {
				misplaced = f.Name
			}
		})
		if misplaced != "" {
			fmt.Fprintf(stderr, "sessiond apps %s: --%s applies to rotate only (to end an app's sessions without a rotation: sessiond apps end-sessions NAME)\n", sub, misplaced)
			return 2
		}
	}
	named := sub == "create" || sub == "revoke" || sub == "rotate" || sub == "end-sessions"
	if (named && len(pos) == 1) || (sub == "quota" && len(pos) == 2) {
		if err := functions.ValidAppName(pos[0]); err != nil {
			fmt.Fprintf(stderr, "sessiond apps %s: %q: %s\n", sub, pos[0], functions.ErrorMessage(err))
			return 2
		}
	}
	switch {
	case sub == "create" && len(pos) == 1:
		method, path = http.MethodPost, "/v1/admin/apps"
		body, _ = json.Marshal(api.CreateAppRequest{Name: pos[0]})
	case sub == "list" && len(pos) == 0:
		method, path = http.MethodGet, "/v1/admin/apps"
	case sub == "revoke" && len(pos) == 1:
		method, path = http.MethodDelete, "/v1/admin/apps/"+url.PathEscape(pos[0])
	case sub == "rotate" && len(pos) == 1:
		if *grace < 0 || *grace > functions.MaxAppKeyGrace || *grace%time.Second != 0 {
			fmt.Fprintf(stderr, "sessiond apps rotate: --grace %s: want whole seconds from 0 to %s\n", *grace, functions.MaxAppKeyGrace)
			return 2
		}
		method, path = http.MethodPost, "/v1/admin/apps/"+url.PathEscape(pos[0])+"/rotate"
		body, _ = json.Marshal(api.RotateAppRequest{GraceSeconds: int64(*grace / time.Second), EndSessions: *endSessions})
	case sub == "end-sessions" && len(pos) == 1:
		method, path = http.MethodPost, "/v1/admin/apps/"+url.PathEscape(pos[0])+"/end-sessions"
	case sub == "quota" && len(pos) == 2:
		var req api.AppQuotaRequest
		switch pos[1] {
		case "default":
		case "none":
			req.QuotaMiB = new(int64(-1))
		default:
			mib, err := strconv.ParseInt(pos[1], 10, 64)
			if err != nil || mib < 0 || mib > functions.MaxAppQuotaMiB {
				fmt.Fprintf(stderr, "sessiond apps quota: %q: want MiB from 0 to %d, none or default\n", pos[1], functions.MaxAppQuotaMiB)
				return 2
			}
			req.QuotaMiB = &mib
		}
		method, path = http.MethodPut, "/v1/admin/apps/"+url.PathEscape(pos[0])+"/quota"
		body, _ = json.Marshal(req)
	case sub == "quota":
		fmt.Fprintln(stderr, "sessiond apps quota: want NAME and MIB (a number, none or default) (sessiond apps --help)")
		return 2
	case named:
		fmt.Fprintf(stderr, "sessiond apps %s: want one NAME (sessiond apps --help)\n", sub)
		return 2
	case sub == "list":
		fmt.Fprintf(stderr, "sessiond apps list: unexpected argument %q (sessiond apps --help)\n", pos[0])
		return 2
	default:
		fmt.Fprintf(stderr, "sessiond apps: unknown command %q: want create, list, rotate, revoke, end-sessions or quota (sessiond apps --help)\n", sub)
		return 2
	}
	target, err := nodeURL(*addr, path)
	if err != nil {
		fmt.Fprintf(stderr, "sessiond apps %s: %v\n", sub, err)
		return 2
	}
	keys, err := readClusterKeys(*keyFile)
	if err == nil && len(keys) == 0 {
		err = errors.New("no cluster key: give --cluster-key-file or SESSIOND_CLUSTER_KEY (a lone node keeps its key in DATA/cluster.key)")
	}
	if err != nil {
		fmt.Fprintf(stderr, "sessiond apps %s: %v\n", sub, err)
		return 2
	}
	reply, err := adminRequest(keys[0], method, target, body)
	if err != nil {
		fmt.Fprintf(stderr, "sessiond apps %s: %v\n", sub, err)
		return 1
	}
	if *asJSON {
		var out bytes.Buffer
		if json.Indent(&out, reply, "", "  ") != nil {
			out.Reset()
			out.Write(reply)
		}
		fmt.Fprintln(stdout, out.String())
		return 0
	}
	switch sub {
	case "create":
		var r api.CreateAppResponse
		if err := json.Unmarshal(reply, &r); err != nil || r.Key == "" {
			fmt.Fprintf(stderr, "sessiond apps create: the node's answer: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "created app %q at %s. Its API key follows, shown this once (the node keeps only a hash):\n%s\n",
			r.App.Name, r.App.CreatedAt.Format(time.RFC3339), r.Key)
	case "list":
		var r api.AppsResponse
		if err := json.Unmarshal(reply, &r); err != nil {
			fmt.Fprintf(stderr, "sessiond apps list: the node's answer: %v\n", err)
			return 1
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tCREATED\tSTORED\tQUOTA\tKEYS\tSTATUS")
		for _, a := range r.Apps {
			status := "active"
			if a.Revoked && a.RevokedAt != nil {
				status = "revoked " + a.RevokedAt.Format(time.RFC3339)
			} else if until := retiring(a.Keys); !until.IsZero() {
				status = "active; older key retires " + until.Format(time.RFC3339)
			}
			stored := "-"
			if a.Stored != nil {
				stored = sizeText(a.Stored.Bytes)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", a.Name, a.CreatedAt.Format(time.RFC3339), stored, quotaText(a.QuotaMiB), len(a.Keys), status)
		}
		_ = w.Flush()
	case "rotate":
		var r api.CreateAppResponse
		if err := json.Unmarshal(reply, &r); err != nil || r.Key == "" {
			fmt.Fprintf(stderr, "sessiond apps rotate: the node's answer: %v\n", err)
			return 1
		}
		until := "at once"
		if t := retiring(r.App.Keys); !t.IsZero() {
			until = "at " + t.Format(time.RFC3339)
		}
		ended := ""
		if *endSessions {
			ended = " Every session it made before the rotation stops working on each node as the rotation reaches it."
		}
		fmt.Fprintf(stdout, "rotated the key of app %q: its older keys stop working %s.%s The new API key follows, shown this once:\n%s\n",
			r.App.Name, until, ended, r.Key)
	case "revoke":
		var r api.AppResponse
		if err := json.Unmarshal(reply, &r); err != nil {
			fmt.Fprintf(stderr, "sessiond apps revoke: the node's answer: %v\n", err)
			return 1
		}
		at := ""
		if r.App.RevokedAt != nil {
			at = " (since " + r.App.RevokedAt.Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(stdout, "revoked app %q%s: its key stops working on each node as the revocation reaches it\n", r.App.Name, at)
	case "end-sessions":
		var r api.AppResponse
		if err := json.Unmarshal(reply, &r); err != nil || r.App.SessionsEndedAt == nil {
			fmt.Fprintf(stderr, "sessiond apps end-sessions: the node's answer: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "ended the sessions of app %q made up to %s: they stop working on each node as the end reaches it\n",
			r.App.Name, r.App.SessionsEndedAt.Format(time.RFC3339))
	case "quota":
		var r api.AppResponse
		if err := json.Unmarshal(reply, &r); err != nil {
			fmt.Fprintf(stderr, "sessiond apps quota: the node's answer: %v\n", err)
			return 1
		}
		if r.App.QuotaMiB == nil {
			fmt.Fprintf(stdout, "app %q is bound by the nodes' --app-quota again, on each node as the change reaches it\n", r.App.Name)
		} else {
			fmt.Fprintf(stdout, "app %q may store %s, in place of the nodes' --app-quota, on each node as the change reaches it\n", r.App.Name, quotaText(r.App.QuotaMiB))
		}
	}
	return 0
}

// sizeText writes n bytes for a person: 512B, 3.4KiB, 1.0MiB, 2.5GiB.
func sizeText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 3 {
		v, i = v/unit, i+1
	}
	return fmt.Sprintf("%.1f%ciB", v, "KMGT"[i])
}

// quotaText writes an app's own quota for a person: "default" for none of its own (the
// nodes' --app-quota), "unbounded", or its size.
func quotaText(mib *int64) string {
	switch {
	case mib == nil:
		return "default"
	case *mib < 0:
		return "unbounded"
	}
	return sizeText(*mib << 20)
}

// retiring returns the latest time one of keys retires at, or zero when none does.
func retiring(keys []api.AppKey) time.Time {
	var t time.Time
	for _, k := range keys {
		if k.RetiresAt != nil && k.RetiresAt.After(t) {
			t = *k.RetiresAt
		}
	}
	return t
}

// appsFlags returns the flags of the apps commands.
func appsFlags() (fs *flag.FlagSet, addr, keyFile *string, asJSON *bool, grace *time.Duration, endSessions *bool) {
	fs = flag.NewFlagSet("sessiond apps", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr = fs.String("http", "127.0.0.1:8080", "the node's API: `ADDR` (host:port) or URL (http[s]://host:port)")
	keyFile = fs.String("cluster-key-file", "", "`FILE` with the cluster key (the node's --cluster-key-file)")
	asJSON = fs.Bool("json", false, "print the node's JSON answer as it is (create, rotate: with the key)")
	grace = fs.Duration("grace", 24*time.Hour, "rotate: how long the older keys keep working (0: they stop at once; at most 720h)")
	endSessions = fs.Bool("end-sessions", false, "rotate: also end every session the app made so far (after a leak)")
	return fs, addr, keyFile, asJSON, grace, endSessions
}

// maxAdminReply bounds an admin answer read whole: a list of every app fits.
const maxAdminReply = 4 << 20

// adminRequest sends a request signed with clusterKey to an admin route and returns the
// body of a 2xx answer, or the node's error.
func adminRequest(clusterKey []byte, method, target string, body []byte) ([]byte, error) {
	resp, err := doAdmin(&http.Client{Timeout: 30 * time.Second}, clusterKey, method, target, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return nil, nodeError(resp)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAdminReply+1))
	if err != nil {
		return nil, fmt.Errorf("reading the node's answer: %w", err)
	}
	if len(b) > maxAdminReply {
		return nil, fmt.Errorf("the node's answer is over %d bytes", maxAdminReply)
	}
	return b, nil
}
