package capeconf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// File is one CAPE configuration (cuckoo.conf, az.conf, …) after all its
// layers were read, as CAPE's Config class sees it.
type File struct {
	Name     string   // "az.conf"
	Sources  []string // the files read, in order; later ones override earlier ones
	Sections []*Section
	// Defaults is configparser's [DEFAULT] section: its options are visible
	// in every section, for lookups and interpolation. Nil when absent.
	Defaults *Section
}

// Section is one [section] of a File.
type Section struct {
	Name    string
	Options []*Option // in order of first appearance, as Python's dict keeps them
}

// Option is one `key = value` of a Section.
type Option struct {
	Section string
	Key     string // lower-cased, as configparser's optionxform does
	// Raw is the value as written (continuation lines joined by "\n"),
	// before interpolation.
	Raw    string
	Source string // the file that set it last
	Line   int
}

// Section returns the named section, or nil.
func (f *File) Section(name string) *Section {
	if f == nil {
		return nil
	}
	for _, s := range f.Sections {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Option returns the named option of the section, or nil.
func (s *Section) Option(key string) *Option {
	if s == nil {
		return nil
	}
	key = strings.ToLower(key)
	for _, o := range s.Options {
		if o.Key == key {
			return o
		}
	}
	return nil
}

// ReadLayers reads the configuration stem (e.g. "az") from a CAPE conf
// directory the way CAPE's Config does: default/<stem>.conf.default, then
// <stem>.conf, then <stem>.conf.d/*.conf in name order, each overriding the
// ones before. It reports false when none of them exists. CAPE also reads
// custom/conf/ and $CAPE_CD; point --conf at a directory holding those
// instead if that is where an installation keeps its settings.
func ReadLayers(dir, stem string) (*File, bool, error) {
	paths := []string{
		filepath.Join(dir, "default", stem+".conf.default"),
		filepath.Join(dir, stem+".conf"),
	}
	extra, err := filepath.Glob(filepath.Join(dir, stem+".conf.d", "*.conf"))
	if err != nil {
		return nil, false, err
	}
	sort.Strings(extra)
	paths = append(paths, extra...)
	f := &File{Name: stem + ".conf"}
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		if err := f.Parse(p, data); err != nil {
			return nil, false, err
		}
	}
	return f, len(f.Sources) > 0, nil
}

// Parse reads one INI file into f over what f already holds, with the rules
// of Python's configparser.ConfigParser defaults, which CAPE uses: `=` or
// `:` between key and value, whichever comes first; keys lower-cased;
// full-line comments only (`#` or `;`, possibly indented) — a `#` after a
// value is part of the value; a line indented deeper than its key continues
// the value; blank lines inside a continued value are kept; a section or
// option repeated within one file is an error (CAPE would not start), while
// a later file overrides an earlier one.
func (f *File) Parse(source string, data []byte) error {
	f.Sources = append(f.Sources, source)
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var (
		cur       *Section
		curOpt    *Option
		lines     []string // the current option's value lines
		indent    int      // the current option's line's indentation
		seen      = map[string]bool{}
		errs      []error
		flushOpen = func() {
			if curOpt != nil {
				curOpt.Raw = strings.TrimRight(strings.Join(lines, "\n"), " \t\r\n\f\v")
			}
			curOpt, lines = nil, nil
		}
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		value := strings.TrimSpace(line)
		if value == "" || value[0] == '#' || value[0] == ';' {
			// configparser keeps a blank line (not a comment) in a value
			// being continued; trailing ones are trimmed when it ends.
			if value == "" && curOpt != nil {
				lines = append(lines, "")
			}
			continue
		}
		lead := len(line) - len(strings.TrimLeft(line, " \t\f\v"))
		if curOpt != nil && lead > indent {
			lines = append(lines, value)
			continue
		}
		flushOpen()
		indent = lead
		if name, ok := sectionHeader(value); ok {
			key := "[" + name + "]"
			if seen[key] && name != "DEFAULT" {
				errs = append(errs, fmt.Errorf("%s:%d: section [%s] repeated", source, n, name))
			}
			seen[key] = true
			cur = f.section(name)
			continue
		}
		if cur == nil {
			errs = append(errs, fmt.Errorf("%s:%d: %q comes before any [section]", source, n, value))
			continue
		}
		m := optionRE.FindStringSubmatch(value)
		if m == nil || strings.TrimSpace(m[1]) == "" {
			errs = append(errs, fmt.Errorf("%s:%d: %q is neither a [section], a key = value nor a comment", source, n, value))
			continue
		}
		key := strings.ToLower(strings.TrimSpace(m[1]))
		if id := cur.Name + "\x00" + key; seen[id] {
			errs = append(errs, fmt.Errorf("%s:%d: [%s] %s repeated", source, n, cur.Name, key))
		} else {
			seen[id] = true
		}
		curOpt = cur.Option(key)
		if curOpt == nil {
			curOpt = &Option{Section: cur.Name, Key: key}
			cur.Options = append(cur.Options, curOpt)
		}
		curOpt.Source, curOpt.Line = source, n
		lines = []string{strings.TrimSpace(m[2])}
	}
	flushOpen()
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", source, err))
	}
	return errors.Join(errs...)
}

// optionRE splits `key = value` at the first `=` or `:`, as configparser's
// option pattern does.
var optionRE = regexp.MustCompile(`^([^=:]*)[=:](.*)$`)

// sectionHeader recognises `[name]`: configparser's header pattern is greedy,
// so the name runs to the last `]` on the line.
func sectionHeader(value string) (string, bool) {
	if !strings.HasPrefix(value, "[") {
		return "", false
	}
	end := strings.LastIndex(value, "]")
	if end < 2 {
		return "", false
	}
	return value[1:end], true
}

func (f *File) section(name string) *Section {
	if name == "DEFAULT" {
		if f.Defaults == nil {
			f.Defaults = &Section{Name: name}
		}
		return f.Defaults
	}
	if s := f.Section(name); s != nil {
		return s
	}
	s := &Section{Name: name}
	f.Sections = append(f.Sections, s)
	return s
}

// lookup finds key as configparser's get does: the section, then [DEFAULT].
func (f *File) lookup(sec *Section, key string) *Option {
	if o := sec.Option(key); o != nil {
		return o
	}
	return f.Defaults.Option(key)
}

// maxDepth is configparser's MAX_INTERPOLATION_DEPTH.
const maxDepth = 10

// Value returns the option's value with configparser's basic interpolation
// applied: `%%` is a percent sign, `%(name)s` the value of another option of
// the same section (or [DEFAULT]); CAPE also offers every environment
// variable as `%(ENV:NAME)s`, looked up in env here.
func (f *File) Value(o *Option, env func(string) (string, bool)) (string, error) {
	sec := f.Section(o.Section)
	if sec == nil {
		sec = f.Defaults
	}
	var b strings.Builder
	if err := f.interpolate(&b, sec, o.Raw, env, 1); err != nil {
		return "", fmt.Errorf("%s.%s: %w", o.Section, o.Key, err)
	}
	return b.String(), nil
}

var refRE = regexp.MustCompile(`^%\(([^)]+)\)s`)

func (f *File) interpolate(b *strings.Builder, sec *Section, rest string, env func(string) (string, bool), depth int) error {
	if depth > maxDepth {
		return errors.New("interpolation nested too deep (a reference loop?)")
	}
	for rest != "" {
		p := strings.IndexByte(rest, '%')
		if p < 0 {
			b.WriteString(rest)
			return nil
		}
		b.WriteString(rest[:p])
		rest = rest[p:]
		switch {
		case strings.HasPrefix(rest, "%%"):
			b.WriteByte('%')
			rest = rest[2:]
		case strings.HasPrefix(rest, "%("):
			m := refRE.FindStringSubmatch(rest)
			if m == nil {
				return fmt.Errorf("bad interpolation reference %q", rest)
			}
			rest = rest[len(m[0]):]
			if o := f.lookup(sec, strings.ToLower(m[1])); o != nil {
				if err := f.interpolate(b, sec, o.Raw, env, depth+1); err != nil {
					return err
				}
				continue
			}
			if v, ok := envRef(m[1], env); ok {
				b.WriteString(v) // CAPE escapes %s in it: taken literally
				continue
			}
			return fmt.Errorf("%%(%s)s: no such option, and no such environment variable here", m[1])
		default:
			return fmt.Errorf("'%%' must be followed by '%%' or '(' in %q", rest)
		}
	}
	return nil
}

// envRef resolves `ENV:NAME` the way CAPE's defaults do. configparser
// lower-cases both the defaults' keys and the reference, so CAPE matches a
// variable whatever its case; the name as written, upper- and lower-cased
// covers the variables anyone sets.
func envRef(ref string, env func(string) (string, bool)) (string, bool) {
	if len(ref) < 4 || !strings.EqualFold(ref[:4], "env:") || env == nil {
		return "", false
	}
	name := ref[4:]
	for _, n := range []string{name, strings.ToUpper(name), strings.ToLower(name)} {
		if val, ok := env(n); ok {
			return val, true
		}
	}
	return "", false
}

// EnvRefs names the environment variables a raw value refers to through
// `%(ENV:NAME)s`, as written.
func EnvRefs(raw string) []string {
	var out []string
	for _, m := range envRefRE.FindAllStringSubmatch(raw, -1) {
		out = append(out, m[1])
	}
	return out
}

var envRefRE = regexp.MustCompile(`(?i)%\(env:([^)]+)\)s`)
