package sample

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pe returns the first bytes of a PE file for machine.
func pe(machine uint16) []byte {
	b := make([]byte, 0x100)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x80)
	copy(b[0x80:], "PE\x00\x00")
	binary.LittleEndian.PutUint16(b[0x84:], machine)
	return b
}

func TestPutKeepsOnceReadOnly(t *testing.T) {
	d, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	body := pe(0x8664)
	a, err := d.Put(bytes.NewReader(body), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if a.FileSize != int64(len(body)) || len(a.SHA256) != 64 || len(a.MD5) != 32 || a.FileType != "PE32+ executable (Windows, x86-64)" {
		t.Errorf("sample %+v", a)
	}
	b, err := d.Put(bytes.NewReader(body), 1<<20)
	if err != nil || b.SHA256 != a.SHA256 {
		t.Fatalf("second put: %+v %v", b, err)
	}
	fi, err := os.Stat(d.Path(a.SHA256))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o111 != 0 || fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("sample mode %v: want read-only, never executable", fi.Mode())
	}
	entries, _ := os.ReadDir(filepath.Dir(d.Path(a.SHA256)))
	if len(entries) != 1 || entries[0].Name() != a.SHA256 {
		t.Errorf("files kept: %v", entries)
	}
}

func TestPutRefusesTooLargeAndEmpty(t *testing.T) {
	dir := t.TempDir()
	d, _ := Open(dir)
	_, err := d.Put(strings.NewReader(strings.Repeat("x", 11)), 10)
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Limit != 10 {
		t.Fatalf("Put past the limit = %v, want TooLargeError naming 10", err)
	}
	if _, err := d.Put(strings.NewReader(""), 10); err == nil {
		t.Fatal("Put of an empty file succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("refused uploads left %v behind", entries)
	}
}

func TestArch(t *testing.T) {
	for _, tt := range []struct {
		head []byte
		want string
	}{
		{pe(0x14c), "x86"},
		{pe(0x8664), "x64"},
		{[]byte("\x7fELF\x02"), "x64"},
		{[]byte("\x7fELF\x01"), "x86"},
		{[]byte("MZ"), ""},
		{[]byte("%PDF-1.7"), ""},
	} {
		if got := Arch(tt.head); got != tt.want {
			t.Errorf("Arch(%q…) = %q, want %q", tt.head[:min(8, len(tt.head))], got, tt.want)
		}
	}
}
