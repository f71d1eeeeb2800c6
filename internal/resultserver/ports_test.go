package resultserver

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// freePorts returns n ports free on 127.0.0.1 now.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return out
}

// sendTo is send to one of the server's machine ports.
func sendTo(t *testing.T, port int, ip string, stream []byte) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("dial machine port %d from %s: %v", port, ip, err)
	}
	defer c.Close()
	c.Write(stream)
	c.(*net.TCPConn).CloseWrite()
	awaitClose(t, c)
}

// TestMachinePorts: two machines behind one address (every guest of QEMU's
// user networking connects from the host's loopback) report to ports of
// their own, and each task gets its own machine's stream; a machine port
// with no task registered takes nothing; the server's own port still maps
// by peer address.
func TestMachinePorts(t *testing.T) {
	ports := freePorts(t, 2)
	var logs logBuffer
	s := startServer(t, Options{MachinePorts: ports}, &logs)
	base := t.TempDir()
	const shared = "127.0.0.1" // the forwarded address both machines share
	for i, port := range ports {
		if err := s.RegisterMachine(shared, port, int64(i+1), filepath.Join(base, strconv.Itoa(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.RegisterMachine(ipA, s.Addr().Port, 3, filepath.Join(base, "3")); err != nil {
		t.Fatal(err)
	}
	for i, port := range ports {
		sendTo(t, port, shared, []byte("LOG\nmachine "+strconv.Itoa(i+1)+"\n"))
	}
	send(t, s, ipA, []byte("LOG\nby address\n"))
	for i, port := range ports {
		st := s.UnregisterMachine(shared, port, int64(i+1))
		if st.Connections != 1 {
			t.Errorf("task %d: %d connections, want 1", i+1, st.Connections)
		}
		got := files(t, filepath.Join(base, strconv.Itoa(i+1)))["analysis.log"]
		if want := "machine " + strconv.Itoa(i+1) + "\n"; got != want {
			t.Errorf("task %d analysis.log = %q, want %q", i+1, got, want)
		}
	}
	if got := files(t, filepath.Join(base, "3"))["analysis.log"]; got != "by address\n" {
		t.Errorf("task 3 (by address) analysis.log = %q", got)
	}
	// Unregistered now: the port takes nothing, and says so once.
	before := tree(t, base)
	sendTo(t, ports[0], shared, []byte("LOG\nlate\n"))
	if d := diffTrees(before, tree(t, base)); d != "" {
		t.Errorf("a machine port with no task wrote: %s", d)
	}
	if !strings.Contains(logs.String(), "peer=\"machine port "+strconv.Itoa(ports[0])+"\"") {
		t.Errorf("the dropped connection is not logged naming its port:\n%s", logs.String())
	}
}

// TestMachinePortInUse: a machine port that cannot be listened on fails New.
func TestMachinePortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = New(Options{Listen: "127.0.0.1:0", MachinePorts: []int{port}})
	if err == nil || !strings.Contains(err.Error(), "machine port "+strconv.Itoa(port)) {
		t.Fatalf("New with machine port %d in use = %v, want an error naming it", port, err)
	}
}
