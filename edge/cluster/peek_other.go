//go:build !unix

package cluster

import "net"

// closedByPeer cannot tell here: a request written on a connection the peer closed fails
// as one that may have been served.
func closedByPeer(net.Conn) bool { return false }
