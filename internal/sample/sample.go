// Package sample keeps submitted files: each stored once, by its SHA-256,
// under the data directory, read-only and never executable. Nothing is ever
// stored under a name an upload chose; the original name is the task's data.
package sample

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"

	"github.com/sandfleet/sandfleet/internal/store"
)

// TooLargeError says an upload went past the size limit; nothing was kept.
type TooLargeError struct{ Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("sample larger than scheduler.max_sample_size (%d bytes)", e.Limit)
}

// Dir is the samples directory.
type Dir struct{ path string }

// Open returns the samples directory at path, creating it if need be.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, fmt.Errorf("samples directory: %w", err)
	}
	return &Dir{path: path}, nil
}

// Path is where the sample with this SHA-256 lives.
func (d *Dir) Path(sha256 string) string { return filepath.Join(d.path, sha256[:2], sha256) }

// Put reads a sample of at most limit bytes, hashes it and keeps it (once:
// a sample already kept is not written again). It returns the sample's
// record for the database; a *TooLargeError past the limit, or an empty
// file, keeps nothing.
func (d *Dir) Put(r io.Reader, limit int64) (store.Sample, error) {
	st, err := d.Stage(r, limit)
	if err != nil {
		return store.Sample{}, err
	}
	defer st.Discard()
	if err := st.Keep(); err != nil {
		return store.Sample{}, err
	}
	return st.Sample, nil
}

// Staged is an upload read, hashed and written to a temporary file, not yet
// kept: a request that turns out to be invalid after its file was read
// discards it and leaves the samples directory as it was.
type Staged struct {
	Sample store.Sample
	Head   []byte // the first bytes, for FileType and Arch
	d      *Dir
	tmp    string // "" once kept or discarded
}

// Stage reads a sample of at most limit bytes into a temporary file of the
// samples directory and hashes it. Keep or Discard it; a *TooLargeError past
// the limit, or an empty file, leaves nothing behind.
func (d *Dir) Stage(r io.Reader, limit int64) (*Staged, error) {
	tmp, err := os.CreateTemp(d.path, ".upload-*")
	if err != nil {
		return nil, fmt.Errorf("store sample: %w", err)
	}
	st := &Staged{d: d, tmp: tmp.Name()}
	if err := st.write(tmp, r, limit); err != nil {
		tmp.Close()
		st.Discard()
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		st.Discard()
		return nil, fmt.Errorf("store sample: %w", err)
	}
	return st, nil
}

func (st *Staged) write(tmp *os.File, r io.Reader, limit int64) error {
	h256, h1, h5, h512, hcrc := sha256.New(), sha1.New(), md5.New(), sha512.New(), crc32.NewIEEE()
	head := &headBuffer{max: 4096}
	w := io.MultiWriter(tmp, h256, h1, h5, h512, hcrc, head)
	n, err := io.Copy(w, io.LimitReader(r, limit+1))
	switch {
	case err != nil:
		return fmt.Errorf("store sample: %w", err)
	case n > limit:
		return &TooLargeError{Limit: limit}
	case n == 0:
		return errors.New("the file is empty")
	}
	st.Head = head.Bytes()
	st.Sample = store.Sample{
		SHA256: hex.EncodeToString(h256.Sum(nil)), SHA1: hex.EncodeToString(h1.Sum(nil)),
		MD5: hex.EncodeToString(h5.Sum(nil)), SHA512: hex.EncodeToString(h512.Sum(nil)),
		CRC32: fmt.Sprintf("%08X", hcrc.Sum32()), FileSize: n, FileType: FileType(st.Head),
	}
	if err := tmp.Chmod(0o440); err != nil {
		return fmt.Errorf("store sample: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("store sample: %w", err)
	}
	return nil
}

// Keep moves the upload to its place by SHA-256 (or drops it, when that
// sample is kept already).
func (st *Staged) Keep() error {
	if st.tmp == "" {
		return errors.New("store sample: the upload was already kept or discarded")
	}
	defer st.Discard()
	final := st.d.Path(st.Sample.SHA256)
	if _, err := os.Stat(final); err == nil {
		return nil // kept already
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return fmt.Errorf("store sample: %w", err)
	}
	if err := os.Rename(st.tmp, final); err != nil {
		return fmt.Errorf("store sample: %w", err)
	}
	st.tmp = ""
	return nil
}

// Discard removes the upload unless it was kept; it may be called again.
func (st *Staged) Discard() {
	if st.tmp != "" {
		os.Remove(st.tmp)
		st.tmp = ""
	}
}

// Head reads the first bytes of a kept sample, for FileType and Arch.
func (d *Dir) Head(sha256 string) ([]byte, error) {
	f, err := os.Open(d.Path(sha256))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	bytes.Buffer
	max int
}

func (h *headBuffer) Write(p []byte) (int, error) {
	if room := h.max - h.Len(); room > 0 {
		h.Buffer.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// FileType names a file by its first bytes, as far as the scheduler needs:
// the executable formats, and "data" for the rest.
func FileType(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("MZ")):
		switch peMachine(head) {
		case 0x14c:
			return "PE32 executable (Windows, Intel 80386)"
		case 0x8664:
			return "PE32+ executable (Windows, x86-64)"
		}
		return "MS-DOS executable"
	case bytes.HasPrefix(head, []byte("\x7fELF")) && len(head) > 4:
		if head[4] == 2 {
			return "ELF 64-bit executable"
		}
		return "ELF 32-bit executable"
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		return "Zip archive data"
	case bytes.HasPrefix(head, []byte("%PDF")):
		return "PDF document"
	case bytes.HasPrefix(head, []byte("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")):
		return "Composite Document File V2 Document"
	}
	return "data"
}

// Arch predicts the architecture a sample needs — x86 or x64 from a PE's or
// an ELF's header — or "" when the file does not say (CAPE's
// dynamic_arch_determination).
func Arch(head []byte) string {
	switch {
	case bytes.HasPrefix(head, []byte("MZ")):
		switch peMachine(head) {
		case 0x14c:
			return "x86"
		case 0x8664:
			return "x64"
		}
	case bytes.HasPrefix(head, []byte("\x7fELF")) && len(head) > 4:
		switch head[4] {
		case 1:
			return "x86"
		case 2:
			return "x64"
		}
	}
	return ""
}

// peMachine reads the Machine field of a PE header, 0 if there is none.
func peMachine(head []byte) uint16 {
	if len(head) < 0x40 {
		return 0
	}
	off := int(binary.LittleEndian.Uint32(head[0x3c:]))
	if off < 0 || off+6 > len(head) || !bytes.Equal(head[off:off+4], []byte("PE\x00\x00")) {
		return 0
	}
	return binary.LittleEndian.Uint16(head[off+4:])
}
