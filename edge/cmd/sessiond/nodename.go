package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeNameFile is where a node's data directory keeps the name the node had, beside the
// node ID in its bbolt file: a data directory is one member of the cluster.
const nodeNameFile = "node.name"

// stableNodeName returns the node name to run under, and a note for the log when it is
// not the obvious one. A name given explicitly (--node, SESSIOND_NODE) wins and is
// recorded in dataDir; otherwise the name recorded there wins over the host name, so
// that a replica whose host name changes on every restart (a container without a fixed
// hostname) stays one member instead of leaving a failed member behind each time under
// its old name, with its node ID. With neither, the host name is recorded.
func stableNodeName(dataDir, name string, explicit bool) (string, string, error) {
	path := filepath.Join(dataDir, nodeNameFile)
	b, err := os.ReadFile(path) // #nosec G304 -- inside the operator's --data
	recorded := strings.TrimSpace(string(b))
	switch {
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", "", fmt.Errorf("read node name: %w", err)
	case err == nil && recorded == "":
		return "", "", fmt.Errorf("%s is empty: remove it, or give --node", path)
	}
	note := ""
	switch {
	case recorded == name:
		return name, "", nil
	case explicit && recorded != "":
		note = fmt.Sprintf("node name changed from %q (recorded in %s) to %q: peers list %q as failed until they forget it", recorded, path, name, recorded)
	case !explicit && recorded != "":
		return recorded, fmt.Sprintf("node name %q kept from %s (the host name is %q; --node sets another)", recorded, path, name), nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", "", fmt.Errorf("create data directory: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("record node name: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", "", fmt.Errorf("record node name: %w", err)
	}
	return name, note, nil
}
