package azemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"time"
)

// Bounds of the emulated analyzer's talks with the result server.
const (
	// rsConnectFor is how long it keeps trying to reach the result server
	// (CAPE's analyzer tries for ever; an emulator should say it failed).
	rsConnectFor = 30 * time.Second
	// rsWriteTimeout bounds each write: a result server that stops reading
	// must not hold the emulated VM.
	rsWriteTimeout = 30 * time.Second
)

// analyzerRun is one emulated analyzer. It does what CAPE's analyzer does
// on the wire, from the VM's own address so that the result server's
// peer-IP to task mapping is exercised: reads analysis.conf next to the
// script, opens the LOG stream to the result server named there and logs
// what it was given, checks the sample is where the host stored it, uploads
// a report with FILE 2 and a behaviour log with BSON <pid>, runs for the
// emulator's analysis duration (no longer than the task's timeout), and
// exits 0. When told to fail it logs why and exits 1. When the VM goes
// (reimage, delete) it stops where it is, and nothing reports its end.
type analyzerRun struct {
	agent  *agent
	proc   *process
	script string
	fail   bool
	// byExit: it reports its end through its exit code (run by /execpy);
	// else, run by /execute, it sets the agent's status itself as CAPE's
	// analyzer does with POST /status.
	byExit bool
}

func (r *analyzerRun) run() {
	a := r.agent
	code, why := r.analyse(a.ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx.Err() != nil {
		return
	}
	if why != "" {
		a.stderr.printf("emulated analyzer (pid %d): %s", r.proc.pid, why)
		a.log.Info("emulated analyzer failed", "pid", r.proc.pid, "why", why)
	}
	r.proc.exit(code)
	if r.byExit {
		return
	}
	if code == 0 {
		d := "True" // what CAPE's analyzer posts: the result of its run()
		a.status, a.descr = asComplete, &d
	} else {
		a.status, a.descr = asException, &why
	}
}

// analyse is the analyzer's work; it returns the exit code and, for a
// failure, why.
func (r *analyzerRun) analyse(ctx context.Context) (int, string) {
	a := r.agent
	a.mu.Lock()
	confPath := a.fs.join(a.fs.dirname(r.script), "analysis.conf")
	raw, found := a.fs.readFile(confPath)
	a.mu.Unlock()
	if !found {
		return 1, "no analysis.conf at " + confPath
	}
	conf := parseAnalysisConf(raw)
	port, err := strconv.Atoi(conf["port"])
	if conf["ip"] == "" || err != nil {
		return 1, fmt.Sprintf("analysis.conf names no result server (ip %q, port %q)", conf["ip"], conf["port"])
	}
	rs := net.JoinHostPort(conf["ip"], strconv.Itoa(port))

	logConn, err := r.dial(ctx, rs, "LOG\n")
	if err != nil {
		return 1, err.Error()
	}
	defer logConn.Close()
	logf := func(level, format string, args ...any) error {
		now := time.Now()
		line := fmt.Sprintf("%s,%03d [azemu.analyzer] %s: %s\n", now.Format(time.DateTime), now.Nanosecond()/1e6, level, fmt.Sprintf(format, args...))
		return r.write(logConn, []byte(line))
	}
	failed := func(why string) (int, string) {
		_ = logf("ERROR", "%s", why)
		return 1, why
	}

	_ = logf("INFO", "emulated analyzer started (pid %d): sandfleet's Azure emulator runs no analyzer, it speaks the protocol", r.proc.pid)
	_ = logf("INFO", "task %s: category %s, target %s, package %s, options %s",
		conf["id"], conf["category"], conf["target"], orNone(conf["package"]), orNone(conf["options"]))
	if r.fail {
		return failed("failing as the emulator was told to (agent state \"fail\")")
	}
	report := []string{
		"sandfleet azemu emulated analyzer report",
		"task: " + conf["id"], "category: " + conf["category"], "target: " + conf["target"],
		"package: " + conf["package"], "options: " + conf["options"], "timeout: " + conf["timeout"], "clock: " + conf["clock"],
	}
	if conf["category"] == "file" {
		samplePath := a.fs.join(a.tempDir(), conf["file_name"])
		a.mu.Lock()
		sample, found := a.fs.readFile(samplePath)
		a.mu.Unlock()
		if !found {
			return failed("the sample is not where the host put it: no file " + samplePath)
		}
		sum := sha256.Sum256(sample)
		_ = logf("INFO", "sample %s: %d bytes, sha256 %s, type %s", samplePath, len(sample), hex.EncodeToString(sum[:]), orNone(conf["file_type"]))
		report = append(report, "sample: "+samplePath, "size: "+strconv.Itoa(len(sample)), "sha256: "+hex.EncodeToString(sum[:]))
	}

	body := []byte(strings.Join(report, "\n") + "\n")
	sum := sha256.Sum256(body)
	dump := "files/" + hex.EncodeToString(sum[:])
	guestPath := a.fs.join(a.tempDir(), "azemu-report.txt")
	header := fmt.Sprintf("FILE 2\n%s\n%s\n%d\n%d\n%s\nfiles\n0\n", dump, guestPath, r.proc.pid, a.agentPID, guestPath)
	if err := r.send(ctx, rs, header, body); err != nil {
		return failed(err.Error())
	}
	_ = logf("INFO", "uploaded %d bytes to %s", len(body), dump)
	if err := r.send(ctx, rs, fmt.Sprintf("BSON %d\n", r.proc.pid), processInfoBSON()); err != nil {
		return failed(err.Error())
	}
	_ = logf("INFO", "sent a behaviour log for pid %d", r.proc.pid)

	d := a.analysisDuration()
	if t, err := strconv.Atoi(conf["timeout"]); err == nil && t > 0 {
		d = min(d, time.Duration(t)*time.Second)
	}
	_ = logf("INFO", "running for %s", d)
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return 1, "the VM went down"
	case <-timer.C:
	}
	if err := logf("INFO", "analysis completed"); err != nil {
		return 1, err.Error()
	}
	return 0, ""
}

// dial connects to the result server from the VM's own address and sends
// the command line, trying again as CAPE's analyzer does, for a while.
func (r *analyzerRun) dial(ctx context.Context, rs, first string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(r.agent.ip)}, Timeout: 5 * time.Second}
	deadline := time.Now().Add(rsConnectFor)
	for {
		c, err := d.DialContext(ctx, "tcp", rs)
		if err == nil {
			// Closing the connection is how a VM's end reaches a blocked write.
			stop := context.AfterFunc(ctx, func() { _ = c.Close() })
			conn := &rsConn{Conn: c, stop: stop}
			if err := r.write(conn, []byte(first)); err != nil {
				conn.Close()
				return nil, err
			}
			return conn, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("result server %s unreachable from %s: %v", rs, r.agent.ip, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// send is one whole stream: command line, then data, then close.
func (r *analyzerRun) send(ctx context.Context, rs, first string, data []byte) error {
	c, err := r.dial(ctx, rs, first)
	if err != nil {
		return err
	}
	defer c.Close()
	return r.write(c, data)
}

func (r *analyzerRun) write(c net.Conn, b []byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(rsWriteTimeout))
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("result server %s: %v", c.RemoteAddr(), err)
	}
	return nil
}

// rsConn is a result-server connection that forgets its context on close.
type rsConn struct {
	net.Conn
	stop func() bool
}

func (c *rsConn) Close() error {
	c.stop()
	// Half-close first, as CAPE's analyzer shuts its sockets down: the
	// result server reads to EOF.
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	return c.Conn.Close()
}

// analysisDuration picks how long this analysis runs, in the emulator's range.
func (a *agent) analysisDuration() time.Duration {
	lo, hi := a.analysis[0], a.analysis[1]
	if hi <= lo {
		return lo
	}
	return lo + rand.N(hi-lo+1)
}

// parseAnalysisConf reads the [analysis] section of an analysis.conf as
// Python's configparser does for what CAPE writes: "key = value", the key
// ending at the first '=' or ':', both sides trimmed, keys in lower case.
func parseAnalysisConf(b []byte) map[string]string {
	out := map[string]string{}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimRight(line, "\r")
		t := strings.TrimSpace(line)
		switch {
		case t == "" || t[0] == '#' || t[0] == ';':
		case t[0] == '[' && strings.HasSuffix(t, "]"):
			section = t[1 : len(t)-1]
		case section == "analysis":
			i := strings.IndexAny(t, "=:")
			if i < 0 {
				out[strings.ToLower(t)] = ""
				continue
			}
			out[strings.ToLower(strings.TrimSpace(t[:i]))] = strings.TrimSpace(t[i+1:])
		}
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// processInfoBSON is one message of CAPE's monitor as a BSON document: the
// "info" message that names the fields of a process announcement, which
// CAPE's result server and processing read without complaint.
func processInfoBSON() []byte {
	return bsonDoc([][2]any{
		{"I", int32(0)},
		{"name", "__process__"},
		{"type", "info"},
		{"category", "__notification__"},
		{"args", []string{"ProcessIdentifier", "ParentProcessIdentifier", "ModulePath"}},
	})
}

// bsonDoc encodes 32-bit integers, strings and lists of strings: all a
// monitor's info message needs.
func bsonDoc(items [][2]any) []byte {
	var body bytes.Buffer
	for _, kv := range items {
		name := kv[0].(string)
		switch v := kv[1].(type) {
		case int32:
			body.WriteByte(0x10)
			body.WriteString(name + "\x00")
			_ = binary.Write(&body, binary.LittleEndian, v)
		case string:
			body.WriteByte(0x02)
			body.WriteString(name + "\x00")
			_ = binary.Write(&body, binary.LittleEndian, int32(len(v)+1))
			body.WriteString(v + "\x00")
		case []string:
			var elems [][2]any
			for i, s := range v {
				elems = append(elems, [2]any{strconv.Itoa(i), s})
			}
			body.WriteByte(0x04)
			body.WriteString(name + "\x00")
			body.Write(bsonDoc(elems))
		}
	}
	out := binary.LittleEndian.AppendUint32(nil, uint32(body.Len()+5))
	out = append(out, body.Bytes()...)
	return append(out, 0)
}
