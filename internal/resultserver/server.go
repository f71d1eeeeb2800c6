// Package resultserver is CAPE's result server (TCP, port 2042 by default):
// the analyzer inside an analysis machine connects back to it and streams the
// live analysis log, the monitor's BSON/protobuf behaviour logs and uploaded
// files, which land in the task's analysis folder in CAPE's layout
// (storage/analyses/<id>/: analysis.log, logs/, files/, shots/, files.json …)
// so that CAPE's processing can read them unchanged.
//
// The guest is running malware, so every byte it sends is hostile. CAPE's
// server trusts it more than it should; this one is built so that:
//   - nothing outside the registered analysis folder can ever be written: the
//     folder is opened as an os.Root (no "..", no absolute path, no symlink
//     leads out of it), upload names are checked against CAPE's allow-list
//     first, and symlinks inside the folder are refused too;
//   - a truncated, slow or malformed stream costs that connection only: every
//     read has a deadline, header lines are bounded, every stream and every
//     analysis has a byte cap, and a handler's failure never reaches the
//     accept loop or another task;
//   - what was refused or cut is counted per task and returned by Unregister,
//     so the scheduler can record it with the analysis.
package resultserver

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Options' zero values. The caps CAPE has none for (log,
// streams, analysis) are sized well above what a real analysis produces, so
// that only a runaway or hostile guest meets them.
const (
	DefaultListen           = "127.0.0.1:2042"
	DefaultMaxFile          = 100 << 20 // CAPE's upload_max_size
	DefaultMaxLog           = 64 << 20
	DefaultMaxStream        = 1 << 30
	DefaultMaxAnalysis      = 4 << 30
	DefaultMaxFiles         = 100_000
	DefaultMaxConns         = 1024
	DefaultIdleTimeout      = 10 * time.Minute
	DefaultHandshakeTimeout = 30 * time.Second // CAPE's 30 s for the header
	DefaultUnregisterWait   = 10 * time.Second

	// maxLine bounds every header line, newline included, as CAPE's
	// MAX_NETLOG_LINE does: a peer that never sends '\n' costs 4 KiB.
	maxLine = 4 << 10
	// maxRefused bounds Stats.Refused: a guest that opens a million bad
	// connections must not grow the scheduler's memory with it.
	maxRefused = 1000
	// maxWarnedPeers bounds the set of unknown peers already logged.
	maxWarnedPeers = 4096
)

// Options configure a Server. Zero values take the defaults above.
type Options struct {
	Listen      string        // host:port to listen on
	MaxFile     int64         // a FILE upload is cut at this size (guest.upload_max_size, default 100 MiB), as CAPE does ("... (truncated)" appended)
	MaxLog      int64         // analysis.log cap (default 64 MiB) — CAPE leaves it unbounded
	MaxStream   int64         // cap per BSON / PROTO stream (default 1 GiB) — CAPE leaves them unbounded
	MaxAnalysis int64         // total bytes one analysis may write (default 4 GiB)
	IdleTimeout time.Duration // a connection silent this long is closed (default 10 min); the first line must come within HandshakeTimeout
	Logger      *slog.Logger

	// HandshakeTimeout is how long a new connection has to send its whole
	// header (default 30 s): the command line and, for FILE, the lines
	// after it, which CAPE's analyzer sends in one write.
	HandshakeTimeout time.Duration
	// MaxFiles bounds the FILE uploads one analysis may store (default
	// 100,000): zero-byte files cost no budget but do cost inodes.
	MaxFiles int
	// MaxConns bounds one task's simultaneous connections (default 1,024),
	// so that a guest cannot exhaust the daemon's file descriptors.
	MaxConns int
	// UnregisterWait bounds how long Unregister waits for the task's
	// handlers once their connections are closed (default 10 s).
	UnregisterWait time.Duration
	// MachinePorts are ports of machines' own, listened on at Listen's
	// host too. A connection to one belongs to the task registered for that
	// port, whatever its peer address: guests behind one forwarded address
	// (QEMU user networking, where every guest connects from the host's
	// loopback) are told apart by the port they report to, as CAPE's
	// per-machine resultserver_port does.
	MachinePorts []int
}

func (o Options) withDefaults() Options {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.MaxFile <= 0 {
		o.MaxFile = DefaultMaxFile
	}
	if o.MaxLog <= 0 {
		o.MaxLog = DefaultMaxLog
	}
	if o.MaxStream <= 0 {
		o.MaxStream = DefaultMaxStream
	}
	if o.MaxAnalysis <= 0 {
		o.MaxAnalysis = DefaultMaxAnalysis
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.UnregisterWait <= 0 {
		o.UnregisterWait = DefaultUnregisterWait
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Stats is what one task's connections delivered.
type Stats struct {
	Connections int      // connections accepted for the task
	Files       int      // FILE uploads stored (duplicated ones store nothing)
	Streams     int      // LOG, BSON and PROTO streams accepted
	Bytes       int64    // bytes written into the analysis folder, files.json included
	Truncated   int      // uploads and streams cut by a cap
	Refused     []string // one line per refused upload/command, naming why
}

// Server accepts the analyzers' connections and files what they send under
// the analysis folder of the task their address is registered to.
type Server struct {
	o   Options
	log *slog.Logger
	ln  *net.TCPListener
	// machineLns listen on Options.MachinePorts.
	machineLns map[int]*net.TCPListener

	mu      sync.Mutex
	closed  bool
	started bool
	byPeer  map[peer]*task
	conns   map[net.Conn]struct{} // every open connection, for Close
	warned  map[peer]bool         // unknown peers already logged
	wg      sync.WaitGroup        // accept loop and every connection's goroutine
}

// New applies the defaults to o and listens at once, so that Addr is known
// (and a port in use is an error) before Start.
func New(o Options) (*Server, error) {
	o = o.withDefaults()
	addr, err := net.ResolveTCPAddr("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("resultserver listen %q: %w", o.Listen, err)
	}
	ln, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("resultserver listen %s: %w", o.Listen, err)
	}
	s := newServer(o)
	s.ln = ln
	for _, port := range o.MachinePorts {
		mln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: addr.IP, Port: port, Zone: addr.Zone})
		if err != nil {
			s.closeListeners()
			return nil, fmt.Errorf("resultserver listen on machine port %d: %w", port, err)
		}
		s.machineLns[port] = mln
	}
	return s, nil
}

func (s *Server) closeListeners() error {
	err := s.ln.Close()
	for _, mln := range s.machineLns {
		mln.Close()
	}
	return err
}

// peer is what a connection is known by: its machine's port when it came
// to one (ip unset), else its peer address (port 0).
type peer struct {
	ip   netip.Addr
	port int
}

func (p peer) String() string {
	if p.port != 0 {
		return "machine port " + strconv.Itoa(p.port)
	}
	return p.ip.String()
}

// newServer builds a Server without a listener; tests drive handleConn on
// in-memory connections with it.
func newServer(o Options) *Server {
	o = o.withDefaults()
	return &Server{
		o:          o,
		log:        o.Logger,
		machineLns: map[int]*net.TCPListener{},
		byPeer:     map[peer]*task{},
		conns:      map[net.Conn]struct{}{},
		warned:     map[peer]bool{},
	}
}

// Addr is the address the server listens on.
func (s *Server) Addr() *net.TCPAddr { return s.ln.Addr().(*net.TCPAddr) }

// Start runs the accept loop in the background. Calling it again, or after
// Close, does nothing.
func (s *Server) Start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed {
		return
	}
	s.started = true
	s.wg.Add(1 + len(s.machineLns))
	go s.acceptLoop(s.ln, 0)
	for port, mln := range s.machineLns {
		go s.acceptLoop(mln, port)
	}
}

// acceptLoop accepts on ln; port is the machine port ln listens on, 0 for
// the server's own.
func (s *Server) acceptLoop(ln *net.TCPListener, port int) {
	defer s.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: pausing lets other
			// connections finish instead of spinning on the same error.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Error("resultserver accept", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c, port)
	}
}

// serveConn is one connection's goroutine. A panic in a handler is a bug,
// but it must cost that connection only, never the daemon and its other
// analyses.
func (s *Server) serveConn(c net.Conn, port int) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("resultserver handler panic", "peer", c.RemoteAddr().String(), "panic", p, "stack", string(debug.Stack()))
		}
	}()
	s.handleConn(c, port)
}

// handleConn maps the connection to its task — by the machine port it came
// to, else by its peer address — and runs the protocol; it returns once c
// is closed and the task no longer counts it.
func (s *Server) handleConn(c net.Conn, port int) {
	p := peer{port: port}
	if port == 0 {
		p.ip = peerAddr(c)
	}
	t := s.attach(p, c)
	if t == nil {
		c.Close()
		return
	}
	defer t.detach(c)
	defer c.Close() // before detach: once Unregister returns, c is closed
	h := &handler{s: s, t: t, c: c, log: s.log.With("task", t.id, "peer", peerAddr(c).String())}
	h.run()
}

// attach returns the task registered for p with c counted among its
// connections, or nil when c must be dropped.
func (s *Server) attach(p peer, c net.Conn) *task {
	s.mu.Lock()
	t := s.byPeer[p]
	if t == nil {
		// Logged once per address: a stray scanner or a machine whose task
		// has ended can connect thousands of times.
		first := !s.warned[p] && len(s.warned) < maxWarnedPeers
		if first {
			s.warned[p] = true
		}
		s.mu.Unlock()
		if first {
			s.log.Warn("resultserver: connection from a peer with no task, dropped", "peer", p.String())
		}
		return nil
	}
	s.mu.Unlock()

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.stats.Connections++
	if len(t.conns) >= s.o.MaxConns {
		t.refuseLocked(fmt.Sprintf("connection: over %d open connections", s.o.MaxConns))
		s.log.Warn("resultserver: too many connections, dropped", "task", t.id, "peer", p.String(), "max", s.o.MaxConns)
		return nil
	}
	t.conns[c] = struct{}{}
	t.wg.Add(1)
	return t
}

func peerAddr(c net.Conn) netip.Addr {
	var ap netip.AddrPort
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ap = a.AddrPort()
	} else if p, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		ap = p
	}
	return canonical(ap.Addr())
}

// canonical makes an IPv4 peer seen on a dual-stack socket (::ffff:a.b.c.d)
// equal to the same address registered as a.b.c.d.
func canonical(a netip.Addr) netip.Addr { return a.Unmap().WithZone("") }

// Register maps a peer IP (the analysis machine's address) to a running task
// and its analysis folder (created if need be, 0o750). An IP already
// registered to another task is an error, and so is a task or a folder
// already registered under another IP: two writers in one folder would break
// the exclusivity every upload relies on. Registering the same triple again
// is a no-op.
func (s *Server) Register(ip string, taskID int64, dir string) error {
	return s.RegisterMachine(ip, 0, taskID, dir)
}

// RegisterMachine registers the machine at ip that reports to port: by the
// port when it is one of Options.MachinePorts (the machine's own), else by
// ip, as Register does.
func (s *Server) RegisterMachine(ip string, port int, taskID int64, dir string) error {
	p, err := s.peerOf(ip, port)
	if err != nil {
		return fmt.Errorf("resultserver register task %d: %w", taskID, err)
	}
	if dir == "" {
		return fmt.Errorf("resultserver register task %d: empty analysis folder", taskID)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("resultserver register task %d: %w", taskID, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("resultserver register task %d: server closed", taskID)
	}
	if t := s.byPeer[p]; t != nil {
		if t.id == taskID && t.dir == abs {
			return nil
		}
		return fmt.Errorf("resultserver register task %d: %s is registered to task %d", taskID, p, t.id)
	}
	for other, t := range s.byPeer {
		if t.id == taskID {
			return fmt.Errorf("resultserver register task %d: already registered at %s", taskID, other)
		}
		if t.dir == abs {
			return fmt.Errorf("resultserver register task %d: folder %s belongs to task %d", taskID, abs, t.id)
		}
	}
	// Still under the lock, so that two Registers of one address cannot
	// both win; creating a few folders is quick.
	root, err := openLayout(abs)
	if err != nil {
		return fmt.Errorf("resultserver register task %d: %w", taskID, err)
	}
	t := &task{id: taskID, dir: abs, root: root, conns: map[net.Conn]struct{}{}}
	t.budget.Store(s.o.MaxAnalysis)
	s.byPeer[p] = t
	s.log.Debug("resultserver: task registered", "task", taskID, "peer", p.String(), "dir", abs)
	return nil
}

// peerOf is what the machine at ip reporting to port is known by.
func (s *Server) peerOf(ip string, port int) (peer, error) {
	if _, own := s.machineLns[port]; own && port != 0 {
		return peer{port: port}, nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return peer{}, fmt.Errorf("ip %q: %w", ip, err)
	}
	return peer{ip: canonical(a)}, nil
}

// Unregister forgets the mapping, closes that task's open connections, waits
// for their handlers to finish (at most Options.UnregisterWait), and returns
// what was received. An unknown ip/task pair returns empty Stats.
func (s *Server) Unregister(ip string, taskID int64) Stats {
	return s.UnregisterMachine(ip, 0, taskID)
}

// UnregisterMachine is Unregister for what RegisterMachine registered.
func (s *Server) UnregisterMachine(ip string, port int, taskID int64) Stats {
	p, err := s.peerOf(ip, port)
	if err != nil {
		s.log.Warn("resultserver unregister: bad ip", "task", taskID, "ip", ip)
		return Stats{}
	}
	s.mu.Lock()
	t := s.byPeer[p]
	if t == nil || t.id != taskID {
		s.mu.Unlock()
		s.log.Warn("resultserver unregister: no such registration", "task", taskID, "peer", p.String())
		return Stats{}
	}
	delete(s.byPeer, p)
	s.mu.Unlock()

	if !t.shutdown(s.o.UnregisterWait) {
		s.log.Error("resultserver unregister: handlers still running, their files may be incomplete", "task", taskID, "waited", s.o.UnregisterWait)
	}
	st := t.snapshot()
	s.log.Info("resultserver: task unregistered", "task", taskID, "peer", p.String(),
		"connections", st.Connections, "files", st.Files, "bytes", st.Bytes, "truncated", st.Truncated, "refused", len(st.Refused))
	return st
}

// Close stops accepting, closes every connection and waits for the
// handlers. Registrations are dropped with their statistics.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	var err error
	if s.ln != nil {
		err = s.closeListeners()
	}
	for c := range s.conns {
		c.Close()
	}
	tasks := s.byPeer
	s.byPeer = map[peer]*task{}
	s.mu.Unlock()

	s.wg.Wait()
	for _, t := range tasks {
		t.shutdown(s.o.UnregisterWait)
	}
	return err
}

// task is one registration: a running analysis and its folder.
type task struct {
	id   int64
	dir  string
	root *os.Root // every file operation goes through it

	// budget is what the analysis may still write (MaxAnalysis at start).
	budget atomic.Int64

	mu          sync.Mutex
	closed      bool
	conns       map[net.Conn]struct{}
	wg          sync.WaitGroup // handlers of conns
	stats       Stats
	refusedLost int // refusals beyond maxRefused
	files       int // FILE uploads accepted, for MaxFiles
	filelogMu   sync.Mutex
}

func (t *task) detach(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
	t.wg.Done()
}

// shutdown closes the task's connections, waits up to d for its handlers and
// closes the folder, after which no handler can open anything in it. It
// reports whether the handlers finished in time.
func (t *task) shutdown(d time.Duration) bool {
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	ok := true
	select {
	case <-done:
	case <-timer.C:
		ok = false
	}
	t.root.Close()
	return ok
}

// take reserves up to n bytes of the analysis budget and returns how many
// were granted.
func (t *task) take(n int64) int64 {
	for {
		left := t.budget.Load()
		if left <= 0 || n <= 0 {
			return 0
		}
		g := min(n, left)
		if t.budget.CompareAndSwap(left, left-g) {
			return g
		}
	}
}

func (t *task) wrote(n int64) {
	t.mu.Lock()
	t.stats.Bytes += n
	t.mu.Unlock()
}

func (t *task) count(f func(*Stats)) {
	t.mu.Lock()
	f(&t.stats)
	t.mu.Unlock()
}

// admitFile counts one FILE upload against MaxFiles.
func (t *task) admitFile(limit int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.files >= limit {
		return false
	}
	t.files++
	return true
}

// releaseFile gives back what admitFile counted, for an upload refused
// before anything was created.
func (t *task) releaseFile() {
	t.mu.Lock()
	t.files--
	t.mu.Unlock()
}

// refuse records a refusal; it reports false once Refused is full, so that
// callers stop logging at warn level too.
func (t *task) refuse(line string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.refuseLocked(line)
}

func (t *task) refuseLocked(line string) bool {
	if len(t.stats.Refused) >= maxRefused {
		t.refusedLost++
		return false
	}
	t.stats.Refused = append(t.stats.Refused, line)
	return true
}

func (t *task) snapshot() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stats
	st.Refused = append([]string(nil), t.stats.Refused...)
	if t.refusedLost > 0 {
		st.Refused = append(st.Refused, fmt.Sprintf("%d more refusals not listed", t.refusedLost))
	}
	return st
}
