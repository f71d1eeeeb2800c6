package libvirttest

import (
	"bytes"
	"fmt"
)

// cpioWriter writes the "newc" cpio archive the kernel unpacks as its
// initramfs.
type cpioWriter struct {
	b   *bytes.Buffer
	ino int
}

func newCpio(b *bytes.Buffer) *cpioWriter { return &cpioWriter{b: b} }

// File types in a cpio mode.
const (
	cpioDir  = 0o040000
	cpioFile = 0o100000
	cpioChar = 0o020000
)

func (w *cpioWriter) entry(name string, mode, rdevMajor, rdevMinor int, data []byte) {
	w.ino++
	fmt.Fprintf(w.b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		w.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	w.b.WriteString(name)
	w.b.WriteByte(0)
	w.pad()
	w.b.Write(data)
	w.pad()
}

func (w *cpioWriter) pad() {
	for w.b.Len()%4 != 0 {
		w.b.WriteByte(0)
	}
}

func (w *cpioWriter) dir(name string) { w.entry(name, cpioDir|0o755, 0, 0, nil) }

func (w *cpioWriter) file(name string, perm int, data []byte) {
	w.entry(name, cpioFile|perm, 0, 0, data)
}

func (w *cpioWriter) char(name string, major, minor int) {
	w.entry(name, cpioChar|0o600, major, minor, nil)
}

func (w *cpioWriter) close() { w.entry("TRAILER!!!", 0, 0, 0, nil) }
