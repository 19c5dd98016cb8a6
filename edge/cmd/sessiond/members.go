package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/sessiond/sessiond/edge/api"
)

const membersUsage = `Usage:
  sessiond members remove NAME --http ADDR   declare the failed member NAME gone for good

A node that stops without leaving (its machine lost, killed) is a failed member: the
others keep expecting it back, and a node keeps the writes of its own that it moves to
other nodes until every holder of their partitions, failed ones included, confirms them
(README, "Movement"). Removing a member that will not come back — as an operator does
before or after replacing a dead machine — makes every node treat it as left, so nothing
waits for it any more. Only a member the node at ADDR sees failed can be removed: stop a
live one first, or let it leave (SIGTERM). That is ADDR's view alone — a live member cut
off from ADDR looks failed to it — so check GET /v1/cluster on a node of each region
first. The member's node ID is removed for good: started again with its data, the node is
refused by every other and stops (exit status 1). Wipe its data directory, and it joins as
a new node.

The request is signed with the cluster key: give --cluster-key-file (or
SESSIOND_CLUSTER_KEY_FILE, or the key itself in SESSIOND_CLUSTER_KEY), as to the node.
See docs/OPERATIONS.md, "Replacing a node that is lost".

Flags:
`

// membersCmd runs `sessiond members remove`: an admin request to a running node.
func membersCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "--help" || args[0] == "-h" || args[0] == "help" {
		w, code := stdout, 0
		if len(args) == 0 {
			w, code = stderr, 2
		}
		fmt.Fprint(w, membersUsage)
		fs, _, _ := membersFlags("sessiond members")
		fs.SetOutput(w)
		fs.PrintDefaults()
		return code
	}
	if args[0] != "remove" {
		fmt.Fprintf(stderr, "sessiond members: unknown command %q: want remove (sessiond members --help)\n", args[0])
		return 2
	}
	fs, addr, keyFile := membersFlags("sessiond members remove")
	pos, code, done := parseArgs(fs, args[1:], stdout, stderr, membersUsage, "http", "cluster-key-file")
	if done {
		return code
	}
	if len(pos) != 1 || pos[0] == "" {
		fmt.Fprintln(stderr, "sessiond members remove: want one NAME, the member's node name (sessiond members --help)")
		return 2
	}
	var out api.RemovedMember
	if err := keysRequest(*addr, *keyFile, http.MethodDelete, "/v1/admin/members/"+url.PathEscape(pos[0]), nil, &out); err != nil {
		fmt.Fprintln(stderr, "sessiond members remove:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s is %s: no node waits for it any more\n", out.Name, out.Status)
	return 0
}

// membersFlags returns the flags of the members commands.
func membersFlags(name string) (fs *flag.FlagSet, addr, keyFile *string) {
	fs = flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	addr = fs.String("http", "127.0.0.1:8080", "the node's API: `ADDR` (host:port) or URL (http[s]://host:port)")
	keyFile = fs.String("cluster-key-file", "", "`FILE` with the cluster key (the node's --cluster-key-file)")
	return fs, addr, keyFile
}
