package cli

import (
	"net"
)

// LocalAddr returns addr with an empty host replaced by 127.0.0.1: a bare
// ":8080" means this machine only, never every interface. Listen it with
// net.Listen; an explicit host, 0.0.0.0 included, is kept as given.
func LocalAddr(addr string) string {
	if host, port, err := net.SplitHostPort(addr); err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// IsLoopback reports whether a listener's address is reachable from this
// machine only (127.0.0.0/8 or ::1). An unspecified address (0.0.0.0, ::)
// is not.
func IsLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
