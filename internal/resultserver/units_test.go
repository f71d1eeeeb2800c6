package resultserver

import (
	"strings"
	"testing"
)

func TestUploadPath(t *testing.T) {
	for _, c := range []struct {
		raw, rel string
		mode     openMode
		err      string // substring of the refusal; "" = accepted
	}{
		{raw: "files/abc.exe", rel: "files/abc.exe"},
		{raw: `files\abc.exe`, rel: "files/abc.exe"},
		{raw: "files//abc.exe", rel: "files/abc.exe"},
		{raw: "shots/0001.jpg", rel: "shots/0001.jpg"},
		{raw: "aux/amsi_etw/amsi.jsonl", rel: "aux/amsi_etw/amsi.jsonl"},
		{raw: `aux\sslkeylogfile\sslkeys.log`, rel: "aux/sslkeylogfile/sslkeys.log", mode: modeReplace},
		{raw: "aux/dns_etw.json", rel: "aux/dns_etw.json", mode: modeReplace},
		{raw: "aux/other.json", rel: "aux/other.json"},
		{raw: "tlsdump/tlsdump.log", rel: "tlsdump/tlsdump.log", mode: modeReplace},
		{raw: "files/ps_script.log", rel: "files/ps_script.log", mode: modeAppend},
		{raw: "tlsdump/x_script.log", rel: "tlsdump/x_script.log", mode: modeAppend},
		{raw: "logs/1.bson", rel: "logs/1.bson"},
		{raw: "reports/r.json", rel: "reports/r.json"},
		{raw: "files/a:b\x00c", rel: "files/aXbXc"},
		{raw: "files/.hidden", rel: "files/.hidden"},
		{raw: "files/" + strings.Repeat("n", 255), rel: "files/" + strings.Repeat("n", 255)},

		{raw: "files/" + strings.Repeat("n", 256), err: "over 255"},
		{raw: "../x", err: `folder ".."`},
		{raw: `..\..\x`, err: `folder "../.."`},
		{raw: "files/../../x", err: `folder "files/../.."`},
		{raw: "files/../x", err: `folder "files/.."`},
		{raw: "/etc/passwd", err: `folder "/etc"`},
		{raw: "/x", err: `folder "/"`},
		{raw: `C:\files\x`, err: `folder "C:/files"`},
		{raw: "files/..", err: `".." is not a file name`},
		{raw: "files/.", err: `"." is not a file name`},
		{raw: "files/", err: "empty file name"},
		{raw: "files", err: `folder ""`},
		{raw: "", err: `folder ""`},
		{raw: "files/sub/x", err: `folder "files/sub"`},
		{raw: "Files/x", err: `folder "Files"`},
		{raw: "files\x00/x", err: "not an upload folder"},
		{raw: "files/\xff\xfe", err: "not UTF-8"},
	} {
		rel, _, mode, err := uploadPath(c.raw)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%q: refused: %v", c.raw, err)
		case c.err == "" && (rel != c.rel || mode != c.mode):
			t.Errorf("%q: got %q %s, want %q %s", c.raw, rel, mode, c.rel, c.mode)
		case c.err != "" && err == nil:
			t.Errorf("%q: accepted as %q, want refusal %q", c.raw, rel, c.err)
		case c.err != "" && !strings.Contains(err.Error(), c.err):
			t.Errorf("%q: refused with %q, want %q", c.raw, err, c.err)
		}
	}
}

// TestFilesJSONLine holds lines produced by CAPE's own expression
// (json.dumps(..., ensure_ascii=False) of bytes decoded with "replace"),
// run on CPython 3 with these inputs.
func TestFilesJSONLine(t *testing.T) {
	for _, c := range []struct {
		e    fileEntry
		want string
	}{
		{
			fileEntry{Path: "files/abc_x.exe", FilePath: "C:\\Users\\x\\AppData\\x.exe", PIDs: []int64{1, 2}, PPIDs: []int64{3}, Metadata: "meta", Category: "files"},
			"{\"path\": \"files/abc_x.exe\", \"filepath\": \"C:\\\\Users\\\\x\\\\AppData\\\\x.exe\", \"pids\": [1, 2], \"ppids\": [3], \"metadata\": \"meta\", \"category\": \"files\"}\x0a",
		},
		{
			fileEntry{Path: "files/a", PIDs: []int64{}, PPIDs: []int64{}},
			"{\"path\": \"files/a\", \"filepath\": \"\", \"pids\": [], \"ppids\": [], \"metadata\": \"\", \"category\": \"\"}\x0a",
		},
		{
			fileEntry{Path: "CAPE/1", FilePath: "C:\\\"q\"\x09\x01\x1f\x7f\xe2\x80\xa8", PIDs: []int64{-5}, PPIDs: []int64{},
				Metadata: "\xff\xe2\x82A\xed\xa0\x80\xf0\x9f\x98\x80 \xc3\xa9"},
			"{\"path\": \"CAPE/1\", \"filepath\": \"C:\\\\\\\"q\\\"\\t\\u0001\\u001f\x7f\xe2\x80\xa8\", \"pids\": [-5], \"ppids\": [], \"metadata\": \"\xef\xbf\xbd\xef\xbf\xbdA\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xf0\x9f\x98\x80 \xc3\xa9\", \"category\": \"\"}\x0a",
		},
		{
			fileEntry{Path: "memory/2.dmp", FilePath: "<>&/", PIDs: []int64{4294967295}, PPIDs: []int64{0}, Metadata: "\\n\x0a\x0d\x08\x0c", Category: "memory"},
			"{\"path\": \"memory/2.dmp\", \"filepath\": \"<>&/\", \"pids\": [4294967295], \"ppids\": [0], \"metadata\": \"\\\\n\\n\\r\\b\\f\", \"category\": \"memory\"}\x0a",
		},
	} {
		if got := string(c.e.line()); got != c.want {
			t.Errorf("line(%+v)\n got %q\nwant %q", c.e, got, c.want)
		}
	}
}

func TestParseCommand(t *testing.T) {
	for _, c := range []struct {
		line    string
		cmd     string
		version int64
		hasV    bool
		bad     bool
	}{
		{line: "LOG", cmd: "LOG"},
		{line: "FILE", cmd: "FILE"},
		{line: "FILE 2", cmd: "FILE", version: 2, hasV: true},
		{line: "BSON 1234", cmd: "BSON", version: 1234, hasV: true},
		{line: "BSON  1234 ", cmd: "BSON", version: 1234, hasV: true},
		{line: "PROTO +7", cmd: "PROTO", version: 7, hasV: true},
		{line: "BSON\t1234", cmd: "BSON\t1234"}, // no space: all command, then unknown
		{line: "FILE 2 x", bad: true},
		{line: "FILE x", bad: true},
		{line: "BSON 99999999999999999999", bad: true},
		{line: " ", bad: true},
	} {
		cmd, v, hasV, err := parseCommand(c.line)
		if c.bad {
			if err == nil {
				t.Errorf("%q: accepted as %q %d", c.line, cmd, v)
			}
			continue
		}
		if err != nil || cmd != c.cmd || v != c.version || hasV != c.hasV {
			t.Errorf("%q: got %q %d %v %v, want %q %d %v", c.line, cmd, v, hasV, err, c.cmd, c.version, c.hasV)
		}
	}
}
