package resultserver_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"

	"github.com/sandfleet/sandfleet/internal/resultserver"
)

// The scheduler's side of an analysis: register the machine's address with
// the task's folder before the analyzer starts, unregister when it ends,
// and keep what Unregister reports with the task.
func Example() {
	rs, err := resultserver.New(resultserver.Options{Listen: "127.0.0.1:0"})
	if err != nil {
		panic(err)
	}
	rs.Start()
	defer rs.Close()

	dir, _ := os.MkdirTemp("", "analyses")
	defer os.RemoveAll(dir)
	folder := filepath.Join(dir, "17") // storage/analyses/<task id>
	if err := rs.Register("127.0.0.1", 17, folder); err != nil {
		panic(err)
	}

	// What the analyzer in the machine does: one connection per stream.
	c, _ := net.Dial("tcp", rs.Addr().String())
	c.Write([]byte("LOG\n2026-01-01 10:00:00,000 [root] INFO: Starting analyzer\n"))
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c) // the server closes once it has filed the stream
	c.Close()

	st := rs.Unregister("127.0.0.1", 17)
	log, _ := os.ReadFile(filepath.Join(folder, "analysis.log"))
	fmt.Printf("%d connection, %d stream, %d bytes, %d refused\n", st.Connections, st.Streams, st.Bytes, len(st.Refused))
	fmt.Print(string(log))
	// Output:
	// 1 connection, 1 stream, 55 bytes, 0 refused
	// 2026-01-01 10:00:00,000 [root] INFO: Starting analyzer
}
