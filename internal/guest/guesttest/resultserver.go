package guesttest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Stream is one connection a ResultServer received.
type Stream struct {
	PeerIP  string // the address it came from: the result server's key to the task
	Command string // the first line: "LOG", "FILE 2", "BSON 1234"
	Data    []byte // what followed the first line, so far
	Closed  bool   // the sender finished (EOF)
}

// ResultServer records what analyzers send to CAPE's result server: a TCP
// listener that keeps every connection's first line and bytes, and
// interprets nothing. A stand-in until a test needs the real one.
type ResultServer struct {
	IP   string
	Port int

	mu      sync.Mutex
	streams []*Stream
}

// NewResultServer listens on 127.0.0.1 at a free port until the test ends.
func NewResultServer(tb testing.TB) *ResultServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	s := &ResultServer{IP: addr.IP.String(), Port: addr.Port}
	var wg sync.WaitGroup
	conns := map[net.Conn]bool{}
	tb.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			conns[c] = true
			s.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.record(c)
				s.mu.Lock()
				delete(conns, c)
				s.mu.Unlock()
				_ = c.Close()
			}()
		}
	}()
	return s
}

func (s *ResultServer) record(c net.Conn) {
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	r := bufio.NewReader(c)
	first, err := r.ReadString('\n')
	if err != nil {
		return
	}
	st := &Stream{PeerIP: host, Command: strings.TrimSuffix(first, "\n")}
	s.mu.Lock()
	s.streams = append(s.streams, st)
	s.mu.Unlock()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		s.mu.Lock()
		st.Data = append(st.Data, buf[:n]...)
		if err != nil {
			st.Closed = errors.Is(err, io.EOF)
		}
		s.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Streams returns a copy of the streams received so far, oldest first.
func (s *ResultServer) Streams() []Stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Stream, len(s.streams))
	for i, st := range s.streams {
		out[i] = *st
		out[i].Data = bytes.Clone(st.Data)
	}
	return out
}

// Find returns the first stream whose command starts with prefix ("LOG",
// "FILE", "BSON").
func (s *ResultServer) Find(prefix string) (Stream, bool) {
	for _, st := range s.Streams() {
		if strings.HasPrefix(st.Command, prefix) {
			return st, true
		}
	}
	return Stream{}, false
}

// FileUpload is a FILE 2 stream taken apart.
type FileUpload struct {
	Path, GuestPath, PIDs, PPIDs, Metadata, Category string
	Duplicated                                       bool
	Data                                             []byte
}

// File reads a "FILE 2" stream: the path in the analysis folder, the six
// header lines of version 2, then the file's bytes.
func (st Stream) File() (FileUpload, error) {
	if st.Command != "FILE 2" {
		return FileUpload{}, fmt.Errorf("command %q, want FILE 2", st.Command)
	}
	lines := make([]string, 7)
	rest := st.Data
	for i := range lines {
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return FileUpload{}, fmt.Errorf("FILE 2 header: %d lines of 7", i)
		}
		lines[i], rest = string(rest[:j]), rest[j+1:]
	}
	dup, err := strconv.Atoi(lines[6])
	if err != nil {
		return FileUpload{}, fmt.Errorf("FILE 2 duplicated %q: %v", lines[6], err)
	}
	return FileUpload{
		Path: lines[0], GuestPath: lines[1], PIDs: lines[2], PPIDs: lines[3],
		Metadata: lines[4], Category: lines[5], Duplicated: dup != 0, Data: rest,
	}, nil
}
