package resultserver

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// fileEntry is one line of files.json: what the analyzer said about an
// upload. CAPE's processing (CAPE.py, antiransomware.py) reads these keys.
type fileEntry struct {
	Path     string // the cleaned upload path, e.g. files/<hash>_name.exe
	FilePath string // where the file was in the guest (v2 only)
	PIDs     []int64
	PPIDs    []int64
	Metadata string
	Category string
}

// line renders e exactly as CAPE's result server does — Python's
// json.dumps(..., ensure_ascii=False) with its default ", " and ": "
// separators and its key order — so that a files.json written here is byte
// for byte the one CAPE would have written. Strings are decoded from the
// wire as Python's bytes.decode("utf-8", "replace") does.
func (e fileEntry) line() []byte {
	var b strings.Builder
	b.WriteString(`{"path": `)
	pyString(&b, e.Path)
	b.WriteString(`, "filepath": `)
	pyString(&b, e.FilePath)
	b.WriteString(`, "pids": `)
	pyInts(&b, e.PIDs)
	b.WriteString(`, "ppids": `)
	pyInts(&b, e.PPIDs)
	b.WriteString(`, "metadata": `)
	pyString(&b, e.Metadata)
	b.WriteString(`, "category": `)
	pyString(&b, e.Category)
	b.WriteString("}\n")
	return []byte(b.String())
}

func pyInts(b *strings.Builder, v []int64) {
	b.WriteByte('[')
	for i, n := range v {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.FormatInt(n, 10))
	}
	b.WriteByte(']')
}

// pyString writes s (raw bytes from the wire) as a JSON string: invalid
// UTF-8 bytes become U+FFFD one by one, as Python's "replace" handler does;
// only '"', '\\' and control characters are escaped, as with
// ensure_ascii=False.
func pyString(b *strings.Builder, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			size = maximalSubpart(s[i:])
		}
		i += size
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hex[r>>4])
			b.WriteByte(hex[r&0xf])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}

// maximalSubpart is the length of the invalid sequence at the start of s
// that Python replaces with one U+FFFD: a lead byte and as many of the
// continuation bytes it allows as follow it (Unicode's "maximal subpart").
func maximalSubpart(s string) int {
	lo, hi := byte(0x80), byte(0xbf)
	var need int
	switch c := s[0]; {
	case c >= 0xc2 && c <= 0xdf:
		need = 1
	case c == 0xe0:
		need, lo = 2, 0xa0
	case c == 0xed:
		need, hi = 2, 0x9f
	case c >= 0xe1 && c <= 0xef:
		need = 2
	case c == 0xf0:
		need, lo = 3, 0x90
	case c == 0xf4:
		need, hi = 3, 0x8f
	case c >= 0xf1 && c <= 0xf3:
		need = 3
	default:
		return 1
	}
	n := 1
	for ; n <= need && n < len(s); n++ {
		if s[n] < lo || s[n] > hi {
			break
		}
		lo, hi = 0x80, 0xbf
	}
	return n
}
