// Package capeconf brings a CAPEv2 installation's configuration over to
// sandfleet: it reads CAPE's cuckoo.conf, az.conf, kvm.conf and physical.conf
// (INI files as Python's configparser reads them, layered as CAPE layers
// them), maps every option it can onto a config.Config, and renders that as
// sandfleet YAML in which each key names the CAPE option it came from and
// each CAPE option with no sandfleet key is named with the reason. Secrets
// are never copied: the YAML names a file for the operator to put them in.
package capeconf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
)

// Machineries are the CAPE machinery modules sandfleet can import, in the
// order their pools are written.
var Machineries = []string{"az", "kvm", "physical"}

// Options shape an import.
type Options struct {
	// Machinery lists the machineries whose files are imported. Empty:
	// the one cuckoo.conf's [cuckoo] machinery names — every one present
	// when there is no cuckoo.conf or it names multi.
	Machinery []string
	// SecretsDir is where the files that are to hold secrets are named
	// (azure.client_secret_file, …). Default: /etc/sandfleet.
	SecretsDir string
	// Env resolves %(ENV:NAME)s references as CAPE does; nil: the process
	// environment.
	Env func(string) (string, bool)
}

// Result is an imported configuration.
type Result struct {
	Dir       string
	Config    *config.Config
	Files     []*File  // the CAPE files read, in the order cuckoo, az, kvm, physical
	Machinery []string // the machineries imported
	// Mapped gives, for each CAPE option carried over, the sandfleet keys
	// it went to.
	Mapped map[*Option][]string
	// Notes names every CAPE option that was not carried over, with the
	// reason.
	Notes []Note
	// Warnings are remarks on the whole (a scale set without a section, a
	// machine CAPE would skip, …), written at the top of the YAML.
	Warnings []string

	keys    map[string]*keyInfo
	collide map[string]bool
}

// Note is a CAPE option sandfleet does not take, and why.
type Note struct {
	File   string
	Option *Option
	Name   string // how the YAML names it: section.key (file:section.key when sections of two files share a name)
	Reason string
	// Unknown: the option is not one import-cape knows from CAPE's
	// configuration; nothing was made of it.
	Unknown bool
}

// keyInfo is what the YAML says about one sandfleet key.
type keyInfo struct {
	sources []string // CAPE option names
	remarks []string
	head    []string
}

const unknownReason = "unknown option: not one of CAPE's that import-cape knows; nothing was made of it"

// Import reads the CAPE configuration in dir (CAPE's conf directory) and
// maps it onto sandfleet's.
func Import(dir string, opts Options) (*Result, error) {
	if opts.SecretsDir == "" {
		opts.SecretsDir = "/etc/sandfleet"
	}
	if opts.Env == nil {
		opts.Env = os.LookupEnv
	}
	r := &Result{Dir: dir, Mapped: map[*Option][]string{}, keys: map[string]*keyInfo{}, collide: map[string]bool{}}
	files := map[string]*File{}
	for _, stem := range append([]string{"cuckoo"}, Machineries...) {
		f, ok, err := ReadLayers(dir, stem)
		if err != nil {
			return nil, err
		}
		if ok {
			files[stem] = f
			r.Files = append(r.Files, f)
		}
	}
	if len(r.Files) == 0 {
		return nil, fmt.Errorf("%s: no CAPE configuration (cuckoo.conf, az.conf, kvm.conf, physical.conf or default/*.conf.default)", dir)
	}
	seen := map[string]string{}
	for _, f := range r.Files {
		secs := f.Sections
		if f.Defaults != nil {
			secs = append([]*Section{f.Defaults}, secs...)
		}
		for _, s := range secs {
			if other, dup := seen[s.Name]; dup && other != f.Name {
				r.collide[s.Name] = true
			}
			seen[s.Name] = f.Name
		}
	}
	cfg := config.Default()
	cfg.Pools = nil
	r.Config = cfg
	m := &mapper{opts: opts, r: r, cfg: cfg, done: map[*Option]bool{}}
	if err := m.chooseMachinery(files); err != nil {
		return nil, err
	}
	if f := files["cuckoo"]; f != nil {
		m.cuckoo(f)
	}
	for _, name := range Machineries {
		f := files[name]
		switch {
		case f == nil:
		case !slices.Contains(r.Machinery, name):
			m.notImported(f, name)
		case name == "az":
			m.azure(f)
		default:
			m.machines(f, name)
		}
	}
	m.resultServer(files)
	for _, f := range r.Files {
		m.unknown(f)
	}
	placeholders := 0
	for _, k := range r.keys {
		if slices.Contains(k.remarks, placeholderRemark) {
			placeholders++
		}
	}
	if placeholders > 0 {
		m.warn(fmt.Sprintf("%d keys still hold CAPE's <placeholders>: fill them in before sandfleet serve", placeholders))
	}
	return r, nil
}

// mapper carries one import's state.
type mapper struct {
	opts Options
	r    *Result
	cfg  *config.Config
	done map[*Option]bool
	// rs collects the result-server addresses machines are told, for
	// resultServer to reconcile with cuckoo.conf's [resultserver].
	rs []rsClaim
}

// rsClaim is a result-server address CAPE tells some machines.
type rsClaim struct {
	file *File
	ip   *Option // nil: the machine takes cuckoo.conf's [resultserver] ip
	port *Option // nil: the machine takes cuckoo.conf's [resultserver] port
	// own: a libvirt machine, pools[pool].machines[machine], which can
	// have a result-server port of its own.
	own           bool
	pool, machine int
}

func (m *mapper) chooseMachinery(files map[string]*File) error {
	present := func() []string {
		var out []string
		for _, n := range Machineries {
			if files[n] != nil {
				out = append(out, n)
			}
		}
		return out
	}
	if len(m.opts.Machinery) > 0 {
		for _, n := range m.opts.Machinery {
			if !slices.Contains(Machineries, n) {
				return fmt.Errorf("machinery %q: import-cape imports %s", n, strings.Join(Machineries, ", "))
			}
			if files[n] == nil {
				return fmt.Errorf("machinery %s: no %s.conf in %s", n, n, m.r.Dir)
			}
		}
		m.r.Machinery = slices.Clone(m.opts.Machinery)
		if f := files["cuckoo"]; f != nil {
			if o := f.lookup(f.Section("cuckoo"), "machinery"); o != nil {
				m.note(f, o, "not used: --machinery "+strings.Join(m.r.Machinery, ",")+" chose the machineries instead")
			}
		}
		return nil
	}
	f := files["cuckoo"]
	var o *Option
	if f != nil {
		o = f.lookup(f.Section("cuckoo"), "machinery")
	}
	if o == nil {
		m.r.Machinery = present()
		return nil
	}
	v, ok := m.value(f, o)
	if !ok {
		m.r.Machinery = present()
		return nil
	}
	switch v = strings.ToLower(v); {
	case v == "multi":
		m.r.Machinery = present()
		m.use(f, o, "pools", "multi: every machinery file present is imported (multi.conf is not read)")
	case slices.Contains(Machineries, v):
		if files[v] == nil {
			m.warn(fmt.Sprintf("cuckoo.machinery is %s, but there is no %s.conf: no machines imported", v, v))
		} else {
			m.r.Machinery = []string{v}
		}
		m.use(f, o, "pools", "")
	default:
		m.note(f, o, fmt.Sprintf("not carried over: sandfleet has no %s provider (it has Azure scale sets, libvirt domains and static machines)", v))
		m.warn(fmt.Sprintf("cuckoo.machinery is %s: no machines imported; import-cape --machinery az|kvm|physical imports another machinery's file", v))
	}
	return nil
}

// name is how the YAML names an option: section.key as CAPE's code says
// it, qualified with the file when two files have a section of that name
// (CAPE's default az.conf and kvm.conf both have [cuckoo1]).
func (r *Result) name(f *File, o *Option) string {
	if r.collide[o.Section] {
		return f.Name + ":" + o.Section + "." + o.Key
	}
	return o.Section + "." + o.Key
}

func (m *mapper) key(path string) *keyInfo {
	k := m.r.keys[path]
	if k == nil {
		k = &keyInfo{}
		m.r.keys[path] = k
	}
	return k
}

// use records that option o was carried over to the sandfleet key at path
// ("" for none in particular), with a remark for the YAML.
func (m *mapper) use(f *File, o *Option, path, remark string) {
	m.done[o] = true
	if !slices.Contains(m.r.Mapped[o], path) {
		m.r.Mapped[o] = append(m.r.Mapped[o], path)
	}
	k := m.key(path)
	if n := m.r.name(f, o); !slices.Contains(k.sources, n) {
		k.sources = append(k.sources, n)
	}
	if remark != "" && !slices.Contains(k.remarks, remark) {
		k.remarks = append(k.remarks, remark)
	}
}

// set records a sandfleet key written without a CAPE option of its own.
func (m *mapper) set(path, remark string) {
	k := m.key(path)
	if remark != "" {
		k.remarks = append(k.remarks, remark)
	}
}

func (m *mapper) head(path, text string) { m.key(path).head = append(m.key(path).head, text) }

func (m *mapper) note(f *File, o *Option, reason string) {
	if m.done[o] {
		return
	}
	m.done[o] = true
	m.r.Notes = append(m.r.Notes, Note{File: f.Name, Option: o, Name: m.r.name(f, o), Reason: reason, Unknown: reason == unknownReason})
}

func (m *mapper) warn(s string) { m.r.Warnings = append(m.r.Warnings, s) }

// noteSection notes every option of a section not yet handled.
func (m *mapper) noteSection(f *File, s *Section, reason string) {
	if s == nil {
		return
	}
	for _, o := range s.Options {
		m.note(f, o, reason)
	}
}

// unknown notes whatever no mapping took: an option CAPE's configuration
// does not have, as far as import-cape knows.
func (m *mapper) unknown(f *File) {
	for _, s := range append(slices.Clone(f.Sections), f.Defaults) {
		if s == nil {
			continue
		}
		for _, o := range s.Options {
			m.note(f, o, unknownReason)
		}
	}
}

func (m *mapper) notImported(f *File, name string) {
	why := fmt.Sprintf("not imported: the machinery is %s, not %s (import-cape --machinery %s imports it)",
		orNone(strings.Join(m.r.Machinery, ",")), name, name)
	for _, s := range f.Sections {
		m.noteSection(f, s, why)
	}
	m.noteSection(f, f.Defaults, why)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// value returns o's value after interpolation; an option that cannot be
// read is noted.
func (m *mapper) value(f *File, o *Option) (string, bool) {
	v, err := f.Value(o, m.opts.Env)
	if err != nil {
		var why string
		if refs := EnvRefs(o.Raw); len(refs) > 0 {
			why = fmt.Sprintf("not carried over: it refers to the environment variable %s, which is not set here; set it and import again, or fill the key in by hand", strings.Join(refs, ", "))
		} else {
			why = "not carried over: " + strings.TrimPrefix(err.Error(), o.Section+"."+o.Key+": ")
		}
		m.note(f, o, why)
		return "", false
	}
	return strings.TrimSpace(v), true
}

var placeholderRE = regexp.MustCompile(`^<[^<>]+>$`)

// placeholder reports whether v is one of the `<name>` values CAPE's
// default files hold where the operator is to fill something in.
func placeholder(v string) bool { return placeholderRE.MatchString(v) }

const placeholderRemark = "still CAPE's placeholder: fill it in"

// text carries a string option over to *dst at path. An empty option
// leaves sandfleet's default (def, described) and says so.
func (m *mapper) text(f *File, s *Section, key, path string, dst *string) {
	o := f.lookup(s, key)
	if o == nil {
		return
	}
	v, ok := m.value(f, o)
	if !ok {
		return
	}
	if v == "" {
		m.emptyNote(f, o, *dst)
		return
	}
	*dst = v
	if placeholder(v) {
		m.use(f, o, path, placeholderRemark)
		return
	}
	m.use(f, o, path, "")
}

func (m *mapper) emptyNote(f *File, o *Option, def string) {
	if def == "" {
		m.note(f, o, "empty in CAPE: nothing to carry over")
		return
	}
	m.note(f, o, fmt.Sprintf("empty in CAPE: sandfleet's default (%s) applies", def))
}

// typed reads an option for a typed key, noting it when it is empty or
// does not parse.
func (m *mapper) typed(f *File, s *Section, key string, parse func(string) error, def string) (*Option, bool) {
	o := f.lookup(s, key)
	if o == nil {
		return nil, false
	}
	v, ok := m.value(f, o)
	if !ok {
		return o, false
	}
	if v == "" {
		m.emptyNote(f, o, def)
		return o, false
	}
	if err := parse(v); err != nil {
		m.note(f, o, "not carried over: "+err.Error())
		return o, false
	}
	return o, true
}

// boolean carries a yes/no option over to *dst at path.
func (m *mapper) boolean(f *File, s *Section, key, path string, dst *bool) (*Option, bool) {
	var b bool
	o, ok := m.typed(f, s, key, func(v string) (err error) { b, err = parseBool(v); return }, strconv.FormatBool(*dst))
	if ok {
		*dst = b
		m.use(f, o, path, "")
	}
	return o, ok
}

// integer carries a whole-number option over to *dst at path.
func (m *mapper) integer(f *File, s *Section, key, path string, dst *int) (*Option, bool) {
	var n int
	o, ok := m.typed(f, s, key, func(v string) (err error) { n, err = parseInt(v); return }, strconv.Itoa(*dst))
	if ok {
		*dst = n
		m.use(f, o, path, "")
	}
	return o, ok
}

// seconds carries an option in seconds over to the duration *dst at path.
func (m *mapper) seconds(f *File, s *Section, key, path string, dst *time.Duration) (*Option, bool) {
	var n int
	o, ok := m.typed(f, s, key, func(v string) (err error) { n, err = parseInt(v); return }, formatDuration(*dst))
	if ok {
		*dst = time.Duration(n) * time.Second
		m.use(f, o, path, "")
	}
	return o, ok
}

// parseBool reads a boolean as configparser's getboolean does.
func parseBool(v string) (bool, error) {
	switch strings.ToLower(v) {
	case "1", "yes", "true", "on":
		return true, nil
	case "0", "no", "false", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean (yes/no, true/false, on/off, 1/0)", v)
}

// parseInt reads a whole number as Python's int() does (1_000 included).
func parseInt(v string) (int, error) {
	n, err := strconv.Atoi(strings.ReplaceAll(strings.TrimPrefix(v, "+"), "_", ""))
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number", v)
	}
	return n, nil
}

// list splits a comma-separated CAPE value (machines, tags, scale_sets),
// dropping blanks, as CAPE's split-and-strip does.
func list(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// secretFile names the file a secret is to be put in.
func (m *mapper) secretFile(name string) string { return filepath.Join(m.opts.SecretsDir, name) }

// secretRemark tells the operator where CAPE had the secret from.
func secretRemark(o *Option, what string) string {
	s := "put " + what + " in this file (mode 0600); it is not copied here"
	if refs := EnvRefs(o.Raw); len(refs) > 0 {
		s += "; CAPE reads it from the environment variable " + strings.Join(refs, ", ")
	}
	return s
}

func validIP(s string) bool { return net.ParseIP(s) != nil }

// Validate checks the imported configuration as sandfleet will when it
// loads it: after the defaults a loaded file gets.
func (r *Result) Validate() error {
	if len(r.Config.Pools) == 0 {
		// sandfleet would accept it, and run its demo pool on the
		// in-process emulator: not what an import is for.
		return errors.New("no machines imported: without pools sandfleet runs its built-in demo pool on the emulator")
	}
	data, err := r.YAML()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "import-cape-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "sandfleet.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return errors.Join(errors.New("sandfleet would not accept this configuration as it is"), err)
	}
	return nil
}
