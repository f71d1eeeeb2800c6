package azemu

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
)

// agentDiskBytes bounds what one emulated guest stores (analyzer, conf,
// sample, temp files): enough for CAPE's analyzer and a sample at CAPE's
// 100 MB upload limit, while a runaway client cannot exhaust the host.
const agentDiskBytes = 128 << 20

// guestFS is an emulated guest's disk, in memory: files and folders by
// path, with the path rules of the guest's OS (Windows: drive letters,
// either slash, case-insensitive). Errors read like the Python exceptions
// agent.py puts in its messages. Not safe for concurrent use: the agent's
// lock guards it.
type guestFS struct {
	windows bool
	cwd     string
	nodes   map[string]*fsNode // by key (see key)
	used    int64
	limit   int64
}

type fsNode struct {
	path string // as first created
	dir  bool
	data []byte
}

func newGuestFS(windows bool, cwd string, limit int64) *guestFS {
	fs := &guestFS{windows: windows, cwd: cwd, nodes: map[string]*fsNode{}, limit: limit}
	root := "/"
	if windows {
		root = `C:\`
	}
	fs.nodes[fs.key(root)] = &fsNode{path: root, dir: true}
	return fs
}

// pyErr is a Python OSError as str() shows it.
func pyErr(errno int, msg, p string) error {
	return fmt.Errorf("[Errno %d] %s: '%s'", errno, msg, p)
}

// abs makes p absolute and clean in the guest's spelling: on Windows
// backslashes and a drive ("C:\Users\x"), elsewhere slashes.
func (fs *guestFS) abs(p string) (string, error) {
	if p == "" {
		return "", pyErr(2, "No such file or directory", p)
	}
	if !fs.windows {
		if !strings.HasPrefix(p, "/") {
			p = fs.cwd + "/" + p
		}
		return path.Clean(p), nil
	}
	q := strings.ReplaceAll(p, "/", `\`)
	if strings.HasPrefix(q, `\\`) {
		return "", pyErr(2, "No such file or directory (UNC paths are not emulated)", p)
	}
	drive := ""
	if len(q) >= 2 && q[1] == ':' {
		drive, q = strings.ToUpper(q[:2]), q[2:]
	}
	if !strings.HasPrefix(q, `\`) {
		// Drive-relative or relative: against the agent's folder.
		cwdDrive, cwdRest := fs.cwd[:2], fs.cwd[2:]
		if drive == "" || drive == cwdDrive {
			drive, q = cwdDrive, cwdRest+`\`+q
		} else {
			q = `\` + q
		}
	}
	if drive == "" {
		drive = fs.cwd[:2]
	}
	var parts []string
	for _, c := range strings.Split(q, `\`) {
		switch c {
		case "", ".":
		case "..":
			if len(parts) > 0 {
				parts = parts[:len(parts)-1]
			}
		default:
			parts = append(parts, c)
		}
	}
	return drive + `\` + strings.Join(parts, `\`), nil
}

// key is the map key of an absolute path: Windows paths compare without case.
func (fs *guestFS) key(abs string) string {
	if fs.windows {
		return strings.ToLower(abs)
	}
	return abs
}

func (fs *guestFS) sep() string {
	if fs.windows {
		return `\`
	}
	return "/"
}

// parent is the folder holding abs ("" for a root).
func (fs *guestFS) parent(abs string) string {
	i := strings.LastIndex(abs, fs.sep())
	root := fs.windows && i == 2 || !fs.windows && i == 0
	switch {
	case i < 0 || abs == "/" || (fs.windows && len(abs) == 3):
		return ""
	case root:
		return abs[:i+1]
	default:
		return abs[:i]
	}
}

func (fs *guestFS) lookup(p string) (*fsNode, string, error) {
	a, err := fs.abs(p)
	if err != nil {
		return nil, "", err
	}
	return fs.nodes[fs.key(a)], a, nil
}

// mkdirAll is os.makedirs(p, exist_ok=True).
func (fs *guestFS) mkdirAll(p string) error {
	a, err := fs.abs(p)
	if err != nil {
		return err
	}
	var chain []string
	for q := a; q != ""; q = fs.parent(q) {
		chain = append(chain, q)
	}
	slices.Reverse(chain)
	for _, q := range chain {
		n := fs.nodes[fs.key(q)]
		switch {
		case n == nil:
			fs.nodes[fs.key(q)] = &fsNode{path: q, dir: true}
		case !n.dir:
			return pyErr(17, "File exists", q)
		}
	}
	return nil
}

// writeFile is open(p, "wb").write(data): the folder must exist.
func (fs *guestFS) writeFile(p string, data []byte) error {
	a, err := fs.abs(p)
	if err != nil {
		return err
	}
	if par := fs.parent(a); par == "" {
		return pyErr(21, "Is a directory", p)
	} else if n := fs.nodes[fs.key(par)]; n == nil || !n.dir {
		return pyErr(2, "No such file or directory", p)
	}
	old := fs.nodes[fs.key(a)]
	var oldSize int64
	if old != nil {
		if old.dir {
			if fs.windows {
				return pyErr(13, "Permission denied", p)
			}
			return pyErr(21, "Is a directory", p)
		}
		oldSize = int64(len(old.data))
	}
	if fs.used-oldSize+int64(len(data)) > fs.limit {
		return pyErr(28, "No space left on device", p)
	}
	fs.used += int64(len(data)) - oldSize
	if old != nil {
		old.data = data
		return nil
	}
	fs.nodes[fs.key(a)] = &fsNode{path: a, data: data}
	return nil
}

// readFile returns a file's bytes; nil, false for a folder or nothing.
func (fs *guestFS) readFile(p string) ([]byte, bool) {
	n, _, err := fs.lookup(p)
	if err != nil || n == nil || n.dir {
		return nil, false
	}
	return n.data, true
}

// remove deletes a file, or a folder and all under it; false if p is
// neither.
func (fs *guestFS) remove(p string) (dir, ok bool) {
	n, a, err := fs.lookup(p)
	if err != nil || n == nil || fs.parent(a) == "" {
		return false, false
	}
	k := fs.key(a)
	if n.dir {
		prefix := k + fs.key(fs.sep())
		for nk, c := range fs.nodes {
			if strings.HasPrefix(nk, prefix) {
				fs.used -= int64(len(c.data))
				delete(fs.nodes, nk)
			}
		}
	}
	fs.used -= int64(len(n.data))
	delete(fs.nodes, k)
	return n.dir, true
}

// join is os.path.join of the guest's OS for a folder and a name.
func (fs *guestFS) join(dir, name string) string {
	if fs.windows {
		if strings.HasSuffix(dir, `\`) || strings.HasSuffix(dir, "/") || strings.HasSuffix(dir, ":") {
			return dir + name
		}
		return dir + `\` + name
	}
	if strings.HasSuffix(dir, "/") {
		return dir + name
	}
	return dir + "/" + name
}

// dirname is os.path.dirname of the guest's OS.
func (fs *guestFS) dirname(p string) string {
	i := strings.LastIndex(p, "/")
	if fs.windows {
		i = max(i, strings.LastIndex(p, `\`))
	}
	if i < 0 {
		return ""
	}
	d := strings.TrimRight(p[:i+1], `/\`)
	if d == "" || (fs.windows && len(d) == 2 && d[1] == ':') {
		return p[:i+1]
	}
	return d
}

// tempNameChars are the characters of Python's tempfile names.
const tempNameChars = "abcdefghijklmnopqrstuvwxyz0123456789_"

// mktemp is tempfile.mkstemp/mkdtemp with agent.py's arguments: prefix and
// suffix as given (empty by default, so no "tmp"), in dir or the temporary
// folder. It returns the path as Python builds it (joined, not normalised).
func (fs *guestFS) mktemp(dir, prefix, suffix, tempDir string, makeDir bool) (string, error) {
	if dir == "" {
		dir = tempDir
	}
	if n, _, err := fs.lookup(dir); err != nil || n == nil || !n.dir {
		return "", pyErr(2, "No such file or directory", dir)
	}
	for range 100 {
		var b strings.Builder
		for range 8 {
			b.WriteByte(tempNameChars[rand.IntN(len(tempNameChars))])
		}
		p := fs.join(dir, prefix+b.String()+suffix)
		if n, _, _ := fs.lookup(p); n != nil {
			continue
		}
		if makeDir {
			return p, fs.mkdirAll(p)
		}
		return p, fs.writeFile(p, nil)
	}
	return "", pyErr(17, "No usable temporary file name found", dir)
}

// extract is ZipFile.extractall(dir): member names made safe as Python
// does (no drive, no leading slash, no "." or ".." parts; on Windows the
// characters Windows refuses become "_"), folders created as needed.
func (fs *guestFS) extract(zipData []byte, dir string) error {
	zr, err := zip.NewReader(bytes.NewReader(zipData), int64(len(zipData)))
	if err != nil {
		return errors.New("File is not a zip file")
	}
	for _, f := range zr.File {
		name := strings.ReplaceAll(f.Name, `\`, "/")
		if len(name) >= 2 && name[1] == ':' {
			name = name[2:]
		}
		var parts []string
		for _, c := range strings.Split(name, "/") {
			if c == "" || c == "." || c == ".." {
				continue
			}
			if fs.windows {
				c = strings.Map(func(r rune) rune {
					if strings.ContainsRune(`:<>|"?*`, r) {
						return '_'
					}
					return r
				}, c)
			}
			parts = append(parts, c)
		}
		if len(parts) == 0 {
			continue
		}
		target := fs.join(dir, strings.Join(parts, fs.sep()))
		if strings.HasSuffix(f.Name, "/") {
			if err := fs.mkdirAll(target); err != nil {
				return err
			}
			continue
		}
		if err := fs.mkdirAll(fs.dirname(target)); err != nil {
			return err
		}
		rc, err := f.Open()
		if err != nil {
			return err
		}
		// Read no more than the disk could hold: a zip bomb fills nothing.
		data, err := io.ReadAll(io.LimitReader(rc, fs.limit-fs.used+1))
		rc.Close()
		if err != nil {
			return err
		}
		if err := fs.writeFile(target, data); err != nil {
			return err
		}
	}
	return nil
}
