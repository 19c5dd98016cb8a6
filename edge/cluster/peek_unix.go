//go:build unix

package cluster

import (
	"errors"
	"net"
	"syscall"
)

// closedByPeer reports whether the peer of c, an idle connection, has closed it or sent
// something unasked (a TLS alert before closing): either way no request may be written on
// it. It peeks at the socket without blocking or consuming anything.
func closedByPeer(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var b [1]byte
	err = raw.Read(func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		// No error: 0 bytes (the peer closed) or some (it sent something unasked).
		// EAGAIN: nothing to read, still open. Any other error: the socket is broken.
		closed = !errors.Is(rerr, syscall.EAGAIN) && !errors.Is(rerr, syscall.EINTR)
		return true
	})
	return err == nil && closed
}
