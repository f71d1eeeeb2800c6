package resultserver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"unicode/utf8"
)

// uploadFolders are the folders a FILE upload may name (CAPE's
// RESULT_UPLOADABLE). The check is on the whole folder, so "files/a/b" and
// "files/../x" are refused as CAPE refuses them.
var uploadFolders = []string{
	"CAPE", "aux", "aux/amsi_etw", "aux/sslkeylogfile", "browser", "curtain",
	"debugger", "evtx", "files", "htmldump", "memory", "procdump", "shots",
	"sysmon", "tlsdump", "tracee",
}

// resultFolders are where an upload may land (CAPE's RESULT_DIRECTORIES):
// the uploadable folders plus reports/ and logs/, which CAPE also accepts
// from the analyzer.
var resultFolders = func() map[string]bool {
	m := map[string]bool{"reports": true, "logs": true}
	for _, f := range uploadFolders {
		m[f] = true
	}
	return m
}()

// notInFilesJSON are the upload prefixes CAPE keeps out of files.json:
// screenshots and auxiliary output, which processing reads by folder.
var notInFilesJSON = []string{"shots/", "curtain/", "aux/", "sysmon/", "debugger/", "tlsdump/", "evtx", "htmldump/"}

// replaceable are the uploads that CAPE's auxiliary modules send again and
// again as full snapshots (so that their data survives an analysis that
// ends abruptly): each upload replaces the last instead of failing on the
// existing name.
var replaceable = []string{
	"tlsdump/", "aux/dns_etw.json", "aux/network_etw.json", "aux/wmi_etw.json", "aux/sslkeylogfile/sslkeys.log",
}

// filesJSONCategories are the categories CAPE keeps in files.json; any other
// value is recorded as "".
var filesJSONCategories = map[string]bool{"CAPE": true, "files": true, "memory": true, "procdump": true}

// maxName is the longest file name accepted: Linux's NAME_MAX. A longer
// name fails in open anyway, but refusing it first names the reason.
const maxName = 255

// openMode says how an upload's file is opened.
type openMode int

const (
	modeExclusive openMode = iota // new file; an existing name is an error
	modeAppend                    // *_script.log: scripts' logs accumulate
	modeReplace                   // snapshots: truncate and rewrite
)

func (m openMode) String() string {
	return [...]string{"exclusive", "append", "replace"}[m]
}

// uploadPath checks the path a FILE upload names and returns it cleaned,
// with its folder and how to open it. The rules are CAPE's (backslashes are
// separators, the folder must be on the allow-list, NUL and ':' in the name
// become 'X'), plus the refusals CAPE leaves to open(2): empty, "." and ".."
// names, names over NAME_MAX bytes, names that are not UTF-8.
func uploadPath(raw string) (rel, folder string, mode openMode, err error) {
	p := strings.ReplaceAll(raw, `\`, "/")
	// Split as Python's os.path.split does, which CAPE's check relies on:
	// "files//x" is files + x, "/x" is / + x.
	i := strings.LastIndexByte(p, '/')
	folder, name := p[:i+1], p[i+1:]
	if t := strings.TrimRight(folder, "/"); t != "" {
		folder = t
	}
	if !resultFolders[folder] {
		return "", "", 0, fmt.Errorf("folder %q is not an upload folder", folder)
	}
	// Byte by byte: strings.Map would also rewrite invalid UTF-8, which
	// must be seen (and refused) below.
	nb := []byte(name)
	for i, c := range nb {
		if c == 0 || c == ':' {
			nb[i] = 'X'
		}
	}
	name = string(nb)
	switch {
	case name == "":
		return "", "", 0, errors.New("empty file name")
	case name == "." || name == "..":
		return "", "", 0, fmt.Errorf("%q is not a file name", name)
	case len(name) > maxName:
		return "", "", 0, fmt.Errorf("file name is %d bytes, over %d", len(name), maxName)
	case !utf8.ValidString(name):
		return "", "", 0, errors.New("file name is not UTF-8")
	}
	rel = folder + "/" + name
	switch {
	case strings.HasSuffix(rel, "_script.log"):
		mode = modeAppend
	case hasAnyPrefix(rel, replaceable):
		mode = modeReplace
	}
	return rel, folder, mode, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// openLayout creates the analysis folder and CAPE's result folders in it
// (those its result server creates for every connection), and returns the
// folder as a root that nothing can be opened outside of.
func openLayout(dir string) (*os.Root, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("analysis folder: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("analysis folder: %w", err)
	}
	for _, f := range append(uploadFolders, "logs") {
		if err := root.Mkdir(f, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			root.Close()
			return nil, fmt.Errorf("analysis folder %s: %w", f, err)
		}
	}
	return root, nil
}

// errExists is an upload naming a file that already exists.
var errExists = errors.New("file exists; uploads never overwrite")

// openUpload opens rel (already checked by uploadPath or built by the
// server) for writing inside root.
//
// os.Root already keeps every open inside the folder, symlinks included. It
// does follow a symlink that stays inside, though, and a planted link could
// then make one upload write over another analysis artefact; so the folder
// must be a real directory and, unless the file is created new (O_EXCL
// refuses any existing name, links included), the file must be a plain
// file, checked before the open and again on the opened descriptor.
func openUpload(root *os.Root, rel, folder string, mode openMode) (*os.File, error) {
	// From the top down, so that a linked "aux" is named as such rather
	// than as the escape its link leads "aux/amsi_etw" into.
	for i := 0; folder != "" && i <= len(folder); i++ {
		if i < len(folder) && folder[i] != '/' {
			continue
		}
		fi, err := root.Lstat(folder[:i])
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("folder %s is not a directory (%s)", folder[:i], fi.Mode().Type())
		}
	}
	flags := os.O_WRONLY | os.O_CREATE | syscall.O_NOFOLLOW | syscall.O_NONBLOCK
	switch mode {
	case modeExclusive:
		flags |= os.O_EXCL
	case modeAppend:
		flags |= os.O_APPEND
	case modeReplace:
		flags |= os.O_TRUNC
	}
	var before fs.FileInfo
	if mode != modeExclusive {
		fi, err := root.Lstat(rel)
		switch {
		case err == nil && !fi.Mode().IsRegular():
			return nil, fmt.Errorf("existing %s is not a plain file (%s)", rel, fi.Mode().Type())
		case err == nil:
			before = fi
		case !errors.Is(err, fs.ErrNotExist):
			return nil, err
		}
		// O_TRUNC would empty a file that is linked elsewhere before the
		// check on the descriptor could object; a plain file with more
		// than one link is refused for the same reason.
		if before != nil && nlink(before) > 1 {
			return nil, fmt.Errorf("existing %s has other hard links", rel)
		}
	}
	f, err := root.OpenFile(rel, flags, 0o640)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, errExists
		}
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a plain file (%s)", rel, fi.Mode().Type())
	}
	if err == nil && before != nil && !os.SameFile(before, fi) {
		err = fmt.Errorf("%s changed while being opened", rel)
	}
	if err == nil && nlink(fi) > 1 {
		err = fmt.Errorf("%s has other hard links", rel)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func nlink(fi fs.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Nlink)
	}
	return 1
}
