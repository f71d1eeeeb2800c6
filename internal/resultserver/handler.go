package resultserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// truncatedMarker ends a FILE upload cut at MaxFile, as CAPE marks it.
const truncatedMarker = "... (truncated)"

// copyBufs are the buffers streams are copied through: large enough that a
// 100 MiB upload is few system calls, pooled so that a thousand idle
// connections do not each hold one.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

// handler runs the protocol for one connection of a task.
type handler struct {
	s   *Server
	t   *task
	c   net.Conn
	log *slog.Logger
	dr  *deadlineReader
	r   *bufio.Reader
}

// deadlineReader gives every read a deadline: the fixed header deadline
// while the header is read, then IdleTimeout from each read. Without it a
// guest that stops sending would hold a goroutine and a descriptor forever.
type deadlineReader struct {
	c      net.Conn
	idle   time.Duration
	header time.Time // while non-zero, the deadline of every read
}

func (d *deadlineReader) Read(p []byte) (int, error) {
	dl := d.header
	if dl.IsZero() {
		dl = time.Now().Add(d.idle)
	}
	if err := d.c.SetReadDeadline(dl); err != nil {
		return 0, err
	}
	return d.c.Read(p)
}

var (
	errLineTooLong = fmt.Errorf("line over %d bytes", maxLine)
	errNoCommand   = errors.New("connection closed before any command")
)

func (h *handler) run() {
	h.dr = &deadlineReader{c: h.c, idle: h.s.o.IdleTimeout, header: time.Now().Add(h.s.o.HandshakeTimeout)}
	// The reader's buffer is exactly one line long, so that ReadSlice
	// itself refuses a longer line: a peer cannot make a header cost more.
	h.r = bufio.NewReaderSize(h.dr, maxLine)

	line, err := h.readLine(true)
	if err != nil {
		if errors.Is(err, errNoCommand) {
			h.log.Debug("resultserver: connection closed without a command")
			return
		}
		h.headerFailed("connection", "first line", err)
		return
	}
	cmd, version, hasVersion, err := parseCommand(line)
	if err != nil {
		h.refuse("command "+clip(line), err.Error())
		return
	}
	switch cmd {
	case "FILE":
		h.file(version)
	case "LOG":
		h.liveLog()
	case "BSON":
		h.monitorLog(cmd, ".bson", version, hasVersion)
	case "PROTO":
		h.monitorLog(cmd, ".protobuf", version, hasVersion)
	default:
		h.refuse("command "+clip(cmd), "unknown command")
	}
}

// parseCommand splits "COMMAND [version]". Like CAPE, a line with a space
// must be exactly two words and the second an integer; a line without is
// all command.
func parseCommand(line string) (cmd string, version int64, hasVersion bool, err error) {
	if !strings.Contains(line, " ") {
		return line, 0, false, nil
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return "", 0, false, errors.New("not COMMAND [version]")
	}
	v, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return "", 0, false, fmt.Errorf("version %s is not an integer", clip(f[1]))
	}
	return f[0], v, true, nil
}

// readLine reads one header line without its '\n'. An end of stream
// before the first byte of the first line is errNoCommand (a probe, or an
// analyzer giving up), not a cut header.
func (h *handler) readLine(first bool) (string, error) {
	b, err := h.r.ReadSlice('\n')
	switch {
	case err == nil:
		return string(b[:len(b)-1]), nil
	case errors.Is(err, bufio.ErrBufferFull):
		return "", errLineTooLong
	case errors.Is(err, io.EOF) && first && len(b) == 0:
		return "", errNoCommand
	case errors.Is(err, io.EOF):
		return "", io.ErrUnexpectedEOF
	}
	return "", err
}

// describe names a read error for a refusal line.
func (h *handler) describe(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		if !h.dr.header.IsZero() {
			return fmt.Sprintf("header not complete within %s", h.s.o.HandshakeTimeout)
		}
		return fmt.Sprintf("silent for %s", h.s.o.IdleTimeout)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "connection ended inside the header"
	}
	return err.Error()
}

// headerFailed records a header that could not be read, unless the server
// itself closed the connection (Unregister, Close): that is the end of the
// analysis, not something the guest did.
func (h *handler) headerFailed(what, part string, err error) {
	if errors.Is(err, net.ErrClosed) {
		h.log.Debug("resultserver: connection closed by the server during its header", "what", what)
		return
	}
	h.refuse(what, part+": "+h.describe(err))
}

// refuse records a refused command or upload in the task's Stats and logs
// it with the task id.
func (h *handler) refuse(what, why string) {
	line := what + ": " + why
	if h.t.refuse(line) {
		h.log.Warn("resultserver: refused", "what", what, "why", why)
	} else {
		h.log.Debug("resultserver: refused", "what", what, "why", why)
	}
}

// file handles FILE (version < 2) and FILE 2.
func (h *handler) file(version int64) {
	raw, err := h.readLine(false)
	if err != nil {
		h.headerFailed("FILE", "path line", err)
		return
	}
	what := "FILE " + clip(raw)
	rel, folder, mode, err := uploadPath(raw)
	if err != nil {
		h.refuse(what, err.Error())
		return
	}
	e := fileEntry{Path: rel, PIDs: []int64{}, PPIDs: []int64{}}
	duplicated := false
	if version >= 2 {
		var l [6]string
		for i := range l {
			if l[i], err = h.readLine(false); err != nil {
				h.headerFailed(what, "header", err)
				return
			}
		}
		e.FilePath, e.Metadata = l[0], l[3]
		if e.PIDs, err = parseIDs(l[1]); err != nil {
			h.refuse(what, "pids: "+err.Error())
			return
		}
		if e.PPIDs, err = parseIDs(l[2]); err != nil {
			h.refuse(what, "ppids: "+err.Error())
			return
		}
		if filesJSONCategories[l[4]] {
			e.Category = l[4]
		}
		d, err := strconv.ParseInt(strings.TrimSpace(l[5]), 10, 64)
		if err != nil {
			h.refuse(what, "duplicated: "+clip(l[5])+" is not an integer")
			return
		}
		duplicated = d != 0
	}
	h.dr.header = time.Time{}

	var entry []byte
	if !hasAnyPrefix(rel, notInFilesJSON) {
		entry = e.line()
	}
	// The files.json line is paid for before anything is created, so that
	// an exhausted budget refuses the upload instead of leaving a file
	// files.json does not mention.
	if h.t.budget.Load() <= 0 {
		h.refuse(what, "analysis byte cap reached")
		return
	}
	if got := h.t.take(int64(len(entry))); got < int64(len(entry)) {
		h.t.budget.Add(got)
		h.refuse(what, "analysis byte cap reached")
		return
	}
	var f *os.File
	if !duplicated {
		if !h.t.admitFile(h.s.o.MaxFiles) {
			h.t.budget.Add(int64(len(entry)))
			h.refuse(what, fmt.Sprintf("over %d files in this analysis", h.s.o.MaxFiles))
			return
		}
		f, err = openUpload(h.t.root, rel, folder, mode)
		if err != nil {
			h.t.budget.Add(int64(len(entry)))
			h.t.releaseFile()
			h.refuse(what, err.Error())
			return
		}
		defer f.Close()
		h.t.count(func(s *Stats) { s.Files++ })
	}
	if entry != nil {
		if err := h.appendFileLog(entry); err != nil {
			h.log.Error("resultserver: files.json", "path", rel, "err", err)
		}
	}
	if duplicated {
		h.log.Debug("resultserver: duplicated upload recorded", "path", rel)
		return
	}

	n, capHit, err := h.copyCapped(f, h.s.o.MaxFile, "file")
	if capHit != "" {
		// CAPE marks a cut upload in the file itself; the marker is paid
		// for like any byte, and left out when the analysis cap is what
		// was hit.
		if got := h.t.take(int64(len(truncatedMarker))); got == int64(len(truncatedMarker)) {
			if m, werr := io.WriteString(f, truncatedMarker); werr == nil {
				h.t.wrote(int64(m))
			}
		} else {
			h.t.budget.Add(got)
		}
		h.t.count(func(s *Stats) { s.Truncated++ })
		h.log.Warn("resultserver: upload cut", "path", rel, "bytes", n, "cap", capHit)
		// The rest is read and dropped, as CAPE does, so that the analyzer
		// finishes its send instead of failing on a reset connection.
		_, err = h.r.WriteTo(io.Discard)
	}
	if err != nil {
		h.log.Log(context.Background(), endLevel(err), "resultserver: upload ended by an error", "path", rel, "bytes", n, "err", h.describe(err))
		return
	}
	h.log.Debug("resultserver: upload stored", "path", rel, "mode", mode.String(), "bytes", n)
}

// parseIDs reads a space-separated list of process ids.
func parseIDs(s string) ([]int64, error) {
	f := strings.Fields(s)
	ids := make([]int64, 0, len(f))
	for _, w := range f {
		n, err := strconv.ParseInt(w, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s is not an integer", clip(w))
		}
		ids = append(ids, n)
	}
	return ids, nil
}

// appendFileLog appends one line to files.json. The lock keeps lines from
// two uploads of the same analysis whole.
func (h *handler) appendFileLog(line []byte) error {
	h.t.filelogMu.Lock()
	defer h.t.filelogMu.Unlock()
	f, err := openUpload(h.t.root, "files.json", "", modeAppend)
	if err != nil {
		return err
	}
	n, err := f.Write(line)
	h.t.wrote(int64(n))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// liveLog handles LOG: the analyzer's own log, analysis.log. As in CAPE it
// can be opened once per analysis: a second LOG connection (a reconnecting
// or a forged analyzer) is refused rather than interleaved or appended.
func (h *handler) liveLog() {
	h.dr.header = time.Time{}
	if h.t.budget.Load() <= 0 {
		h.refuse("LOG", "analysis byte cap reached")
		return
	}
	f, err := openUpload(h.t.root, "analysis.log", "", modeExclusive)
	if errors.Is(err, errExists) {
		h.refuse("LOG", "analysis.log was already opened by an earlier connection")
		return
	}
	if err != nil {
		h.refuse("LOG", err.Error())
		return
	}
	defer f.Close()
	h.stream("LOG", "analysis.log", f, h.s.o.MaxLog, "log")
}

// monitorLog handles BSON <pid> and PROTO <pid>: a monitored process's
// behaviour log, logs/<pid>.bson or logs/<pid>.protobuf. Like CAPE, a new
// stream for a pid replaces the old one (the monitor reconnects with the
// whole log of a process it re-injects).
func (h *handler) monitorLog(cmd, ext string, pid int64, hasPID bool) {
	h.dr.header = time.Time{}
	switch {
	case !hasPID:
		h.refuse(cmd, "no pid")
		return
	case pid < 0 || pid > math.MaxUint32:
		h.refuse(fmt.Sprintf("%s %d", cmd, pid), "not a pid")
		return
	}
	what := fmt.Sprintf("%s %d", cmd, pid)
	if h.t.budget.Load() <= 0 {
		h.refuse(what, "analysis byte cap reached")
		return
	}
	rel := "logs/" + strconv.FormatInt(pid, 10) + ext
	f, err := openUpload(h.t.root, rel, "logs", modeReplace)
	if err != nil {
		h.refuse(what, err.Error())
		return
	}
	defer f.Close()
	h.stream(what, rel, f, h.s.o.MaxStream, "stream")
}

// stream copies a LOG/BSON/PROTO stream to its file. At a cap the stream is
// not drained as a FILE is: the connection is closed, since everything a
// log stream would still send is more of what is already too much.
func (h *handler) stream(what, rel string, f *os.File, limit int64, capName string) {
	h.t.count(func(s *Stats) { s.Streams++ })
	n, capHit, err := h.copyCapped(f, limit, capName)
	switch {
	case capHit != "":
		h.t.count(func(s *Stats) { s.Truncated++ })
		h.log.Warn("resultserver: stream cut, connection closed", "what", what, "path", rel, "bytes", n, "cap", capHit)
	case err != nil:
		h.log.Log(context.Background(), endLevel(err), "resultserver: stream ended by an error", "what", what, "path", rel, "bytes", n, "err", h.describe(err))
	default:
		h.log.Debug("resultserver: stream stored", "what", what, "path", rel, "bytes", n)
	}
}

// copyCapped copies the rest of the connection to w, writing at most limit
// bytes and no more than the analysis budget allows. capHit names the cap
// that stopped it ("" if the stream ended first); err is a read or write
// error other than the end of the stream. Only data beyond a cap counts as
// hitting it: a stream of exactly limit bytes is whole.
func (h *handler) copyCapped(w io.Writer, limit int64, capName string) (n int64, capHit string, err error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		m, rerr := h.r.Read(buf)
		if m > 0 {
			want := min(int64(m), limit-n)
			got := h.t.take(want)
			if got > 0 {
				k, werr := w.Write(buf[:got])
				n += int64(k)
				h.t.wrote(int64(k))
				if werr != nil {
					return n, "", werr
				}
			}
			if got < int64(m) {
				if got < want {
					return n, "analysis", nil
				}
				return n, capName, nil
			}
		}
		if errors.Is(rerr, io.EOF) {
			return n, "", nil
		}
		if rerr != nil {
			return n, "", rerr
		}
	}
}

// endLevel is how loud a stream's end by err is: a connection the server
// closed (the analysis is over) is routine, anything else is worth a look.
func endLevel(err error) slog.Level {
	if errors.Is(err, net.ErrClosed) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// clip quotes a string from the wire for a log or refusal line, cut so
// that a hostile peer cannot make those lines long.
func clip(s string) string {
	const max = 120
	if len(s) > max {
		return strconv.Quote(s[:max]) + "…"
	}
	return strconv.Quote(s)
}
