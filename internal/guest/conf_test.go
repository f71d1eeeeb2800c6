package guest

import (
	"strings"
	"testing"
	"time"
)

// The golden files are analysis.conf as CAPE's GuestManager.add_config
// writes it for the same task: "key = value" lines joined by "\n" with no
// final newline, Python's True/False, datetimes as %Y%m%dT%H:%M:%S, keys in
// the order of AnalysisManager.build_options, file_name already carrying
// the task folder (subdir_upload) and "exports = " with its trailing space.
const goldenFileConf = "[analysis]\n" +
	"id = 42\n" +
	"ip = 10.0.0.4\n" +
	"port = 2042\n" +
	"category = file\n" +
	"target = invoice (1).exe\n" +
	"package = exe\n" +
	"options = free=yes,arguments=a=b\n" +
	"enforce_timeout = False\n" +
	"clock = 20260102T03:04:05\n" +
	"terminate_processes = False\n" +
	"upload_max_size = 100000000\n" +
	"do_upload_max_size = 0\n" +
	"enable_trim = 0\n" +
	"timeout = 200\n" +
	"file_name = 42\\invoice _1_.exe\n" +
	"file_type = PE32 executable (GUI) Intel 80386, for MS Windows\n" +
	"exports = \n" +
	"browser = True\n" +
	"curtain = False"

const goldenURLConf = "[analysis]\n" +
	"id = 7\n" +
	"ip = 127.0.0.1\n" +
	"port = 2042\n" +
	"category = url\n" +
	"target = http://example.com/a?b=c\n" +
	"package = edge\n" +
	"options = \n" +
	"enforce_timeout = True\n" +
	"clock = 20261130T23:59:59\n" +
	"terminate_processes = False\n" +
	"upload_max_size = 5242880\n" +
	"do_upload_max_size = 0\n" +
	"enable_trim = 0\n" +
	"timeout = 61"

func fileAnalysis() Analysis {
	return Analysis{
		ID: 42, Category: "file", Target: "invoice (1).exe", FileType: "PE32 executable (GUI) Intel 80386, for MS Windows",
		Package: "exe", Options: "free=yes,arguments=a=b", Timeout: 200 * time.Second,
		Clock:          time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Sample:         strings.NewReader("MZ"),
		SampleSize:     2,
		Analyzer:       []byte("zip"),
		ResultServerIP: "10.0.0.4", ResultServerPort: 2042,
		Auxiliary: []AuxModule{{Name: "browser", Enabled: true}, {Name: "curtain"}},
	}
}

func TestRenderConfGolden(t *testing.T) {
	a := fileAnalysis()
	name, err := a.guestFileName(true, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := renderConf(a, name)
	if err != nil {
		t.Fatal(err)
	}
	if got != goldenFileConf {
		t.Errorf("file task:\n got %q\nwant %q", got, goldenFileConf)
	}

	u := Analysis{
		ID: 7, Category: "url", Target: "http://example.com/a?b=c", Package: "edge",
		Timeout: 60*time.Second + time.Millisecond, EnforceTimeout: true,
		Clock:          time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC),
		ResultServerIP: "127.0.0.1", ResultServerPort: 2042, UploadMaxSize: 5 << 20,
	}
	got, err = renderConf(u, "")
	if err != nil {
		t.Fatal(err)
	}
	if got != goldenURLConf {
		t.Errorf("url task:\n got %q\nwant %q", got, goldenURLConf)
	}
}

func TestRenderConfRefusesLineBreaks(t *testing.T) {
	for _, mutate := range []func(*Analysis){
		func(a *Analysis) { a.Target = "x\nip = 6.6.6.6" },
		func(a *Analysis) { a.Options = "a=b\r\nport = 1" },
		func(a *Analysis) { a.Package = "exe\n" },
		func(a *Analysis) { a.FileType = "PE\n" },
		func(a *Analysis) { a.Auxiliary = []AuxModule{{Name: "a = b"}} },
	} {
		a := fileAnalysis()
		mutate(&a)
		if conf, err := renderConf(a, "x.exe"); err == nil {
			t.Errorf("rendered %q", conf)
		}
	}
}

func TestGuestFileName(t *testing.T) {
	for _, c := range []struct {
		name, target string
		subdir, win  bool
		want         string
		wantErr      bool
	}{
		{"a.exe", "", true, true, `42\a.exe`, false},
		{"a.exe", "", true, false, "42/a.exe", false},
		{"a.exe", "", false, true, "a.exe", false},
		{"", `C:\uploads\évil name.doc`, false, true, "_vil name.doc", false},
		{"", "/srv/in/x.bin", false, false, "x.bin", false},
		{`..\..\Windows\win.ini`, "", false, true, ".._.._Windows_win.ini", false},
		{"..", "", false, true, "", true},
		{"", "", false, true, "", true},
	} {
		a := Analysis{ID: 42, FileName: c.name, Target: c.target}
		got, err := a.guestFileName(c.subdir, c.win)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("guestFileName(%q, %q, subdir %v, win %v) = %q, %v; want %q", c.name, c.target, c.subdir, c.win, got, err, c.want)
		}
	}
}

// SanitizeFileName gives what CAPE's sanitize_filename gives (computed with
// CAPE's function and its defaults sanitize_len 32, sanitize_to_len 24).
func TestSanitizeFileName(t *testing.T) {
	for in, want := range map[string]string{
		"sample.exe":                          "sample.exe",
		"   lead.exe":                         "lead.exe",
		" \t tab.exe":                         "tab.exe",
		"a b_c-d.e":                           "a b_c-d.e",
		"ünï©ødé.txt":                         "_n___d_.txt",
		"semi;colon&amp.js":                   "semi_colon_amp.js",
		"invoice (1).exe":                     "invoice _1_.exe",
		"0123456789012345678901234567890.exe": "01234567890123456789.exe",
		"0123456789abcdef0123456789abcdef":    "0123456789abcdef01234567",
		// The extension is longer than the cut: Python's negative slice
		// leaves no stem at all.
		"short.0123456789012345678901234567890123456789": ".0123456789012345678901234567890123456789",
	} {
		if got := SanitizeFileName(in); got != want {
			t.Errorf("SanitizeFileName(%q) = %q, want %q", in, got, want)
		}
	}
}
