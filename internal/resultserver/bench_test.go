package resultserver

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkFileUpload100MiB: one 100 MiB dropped file, as the analyzer
// sends it (1 MiB writes), from connect to the server closing the
// connection with the file closed. MB/s is upload throughput.
func BenchmarkFileUpload100MiB(b *testing.B) {
	const size = 100 << 20
	s := startServer(b, Options{MaxAnalysis: 1 << 50}, nil)
	dir := b.TempDir()
	if err := s.Register(ipA, 1, dir); err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(rand.Uint32())
	}
	b.SetBytes(size)
	n := 0
	for b.Loop() {
		name := fmt.Sprintf("files/f%d", n)
		c := dial(b, s, ipA)
		if _, err := c.Write([]byte(fileV2(name, `C:\big.bin`, "1", "", "", "files", false))); err != nil {
			b.Fatal(err)
		}
		for range size / len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseWrite()
		awaitClose(b, c)
		n++

		b.StopTimer()
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Size() != size {
			b.Fatalf("%s: %v, %d bytes", name, err, fi.Size())
		}
		os.Remove(filepath.Join(dir, name)) // 100 MiB per run would fill the disk
		b.StartTimer()
	}
	if st := s.Unregister(ipA, 1); st.Files != n || st.Truncated != 0 || len(st.Refused) != 0 {
		b.Fatalf("stats %+v", st)
	}
}

// BenchmarkBSON10000SmallWrites: one monitor stream of 10,000 small BSON
// messages, each its own write as the monitor sends them (one API call
// each). MB/s is what the server sustains on small segments.
func BenchmarkBSON10000SmallWrites(b *testing.B) {
	const writes, msgSize = 10_000, 128
	s := startServer(b, Options{MaxAnalysis: 1 << 50}, nil)
	dir := b.TempDir()
	if err := s.Register(ipA, 1, dir); err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, msgSize)
	binary.LittleEndian.PutUint32(msg, msgSize) // a BSON document's length prefix
	b.SetBytes(writes * msgSize)
	for b.Loop() {
		c := dial(b, s, ipA)
		if _, err := c.Write([]byte("BSON 4242\n")); err != nil {
			b.Fatal(err)
		}
		for range writes {
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
		}
		c.CloseWrite()
		awaitClose(b, c)
	}
	b.StopTimer()
	if fi, err := os.Stat(filepath.Join(dir, "logs", "4242.bson")); err != nil || fi.Size() != writes*msgSize {
		b.Fatalf("4242.bson: %v", err)
	}
	if st := s.Unregister(ipA, 1); st.Truncated != 0 || len(st.Refused) != 0 {
		b.Fatalf("stats %+v", st)
	}
}
