package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"

	"gopkg.in/yaml.v3"
)

// Decode parses YAML into cfg strictly: an unknown key, a duplicate key or a
// value of the wrong type is an error naming its line and key path
// (`line 2: fleet.reconcile_interval: "fast" is not a duration (e.g. 30s)`).
// Every such problem is reported, not only the first. On error cfg may be
// partly filled.
//
// yaml.v3 alone reports type errors by line and Go type ("cannot unmarshal
// !!str `fast` into time.Duration"), and a line does not identify a key when a
// flow mapping puts several on it. So the document is parsed into a node tree
// and walked alongside cfg's type, which knows the key path at every step.
// yaml.v3 still converts each scalar, so what a value may look like (yes for
// true, 0x10, 1_000) is unchanged.
func Decode(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil // an empty file is the defaults
		}
		return yamlError(err)
	}
	var more yaml.Node
	switch err := dec.Decode(&more); {
	case err == nil:
		return fmt.Errorf("line %d: a second YAML document; the configuration is one document", more.Line)
	case !errors.Is(err, io.EOF):
		return yamlError(err)
	}
	d := decoder{merging: map[*yaml.Node]bool{}}
	root := &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = doc.Content[0]
	}
	d.value("", root, reflect.ValueOf(cfg).Elem())
	return errors.Join(d.errs...)
}

// yamlError drops yaml.v3's package prefix from a syntax error; the line it
// names is what the reader needs.
func yamlError(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), "yaml: "))
}

// maxValues bounds the values one document may expand to. Aliases make a
// small document expand exponentially (the "billion laughs"); a thousand
// static machines with ten tags each is some 20,000.
const maxValues = 1 << 18

// decoder walks a YAML node tree alongside the Go value it fills.
type decoder struct {
	errs    []error
	values  int
	merging map[*yaml.Node]bool // mappings whose "<<" keys are being expanded, against cycles
}

// spend counts n more values toward maxValues and reports whether the
// document is still within it.
func (d *decoder) spend(at *yaml.Node, path string, n int) bool {
	over := d.values > maxValues
	d.values += n
	if d.values <= maxValues {
		return true
	}
	if !over {
		d.fail(at, path, "the document expands to more than %d values (aliases?)", maxValues)
	}
	return false
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	d.errs = append(d.errs, fmt.Errorf("line %d: %s", n.Line, msg))
}

var (
	durationType    = reflect.TypeFor[time.Duration]()
	sizeType        = reflect.TypeFor[Size]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	wholeNumber     = regexp.MustCompile(`^[-+]?[0-9][0-9_]*$`)
)

// value decodes n into v, the value at key path path.
func (d *decoder) value(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias // the parser never anchors an alias, so one step resolves it
	}
	if !d.spend(n, path, 1) {
		return
	}
	// As yaml.v3 does: null empties a list and leaves anything else as it was,
	// so `fleet:` with nothing under it keeps the defaults.
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		if v.Kind() == reflect.Slice {
			v.SetZero()
		}
		return
	}
	switch {
	case reflect.PointerTo(v.Type()).Implements(unmarshalerType):
		d.scalar(path, n, v) // a type that parses itself takes one scalar, whatever its kind
	case v.Kind() == reflect.Struct:
		d.section(path, n, v)
	case v.Kind() == reflect.Slice:
		d.list(path, n, v)
	case v.Kind() == reflect.Map:
		d.mapping(path, n, v)
	default:
		d.scalar(path, n, v)
	}
}

func (d *decoder) scalar(path string, n *yaml.Node, v reflect.Value) {
	t := v.Type()
	if n.Kind != yaml.ScalarNode {
		d.fail(n, path, "want %s, not %s", expected(t), describe(n))
		return
	}
	custom := reflect.PointerTo(t).Implements(unmarshalerType)
	isInt := !custom && t != durationType && v.CanInt()
	err := n.Decode(v.Addr().Interface())
	var te *yaml.TypeError
	switch {
	case err != nil && !errors.As(err, &te):
		// A type's own UnmarshalYAML (Size) says what it wants.
		d.fail(n, path, "%v", err)
	case err != nil && isInt && wholeNumber.MatchString(n.Value):
		d.fail(n, path, "%s is out of range", quote(n.Value))
	case err != nil, isInt && n.ShortTag() == "!!float":
		// yaml.v3 takes 2.5 for an integer and truncates it to 2.
		d.fail(n, path, "%s is not %s", quote(n.Value), expected(t))
	}
}

func (d *decoder) list(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "want a list, not %s", describe(n))
		return
	}
	// A fresh slice, as yaml.v3 makes: a list in the file replaces the
	// default rather than extending it.
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, e := range n.Content {
		d.value(fmt.Sprintf("%s[%d]", path, i), e, s.Index(i))
	}
	v.Set(s)
}

// mapping decodes a map keyed by strings: its keys are the file's, not
// sandfleet's (scheduler.package_tags names packages).
func (d *decoder) mapping(path string, n *yaml.Node, v reflect.Value) {
	m := reflect.MakeMap(v.Type())
	ok := d.entries(path, n, func(key, keyPath string, _, value *yaml.Node) {
		e := reflect.New(v.Type().Elem()).Elem()
		d.value(keyPath, value, e)
		m.SetMapIndex(reflect.ValueOf(key), e)
	})
	if ok {
		v.Set(m)
	}
}

// entries calls fn for each key of the mapping n once, with its path; it
// fails a node that is not a mapping, a key that is not a name and a key
// given twice. It reports whether n was a mapping.
func (d *decoder) entries(path string, n *yaml.Node, fn func(key, keyPath string, keyNode, value *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping (key: value), not %s", describe(n))
		return false
	}
	set := map[string]*yaml.Node{}
	for _, p := range d.pairs(path, n) {
		k := p.key
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "a key must be a name, not %s", describe(k))
			continue
		}
		keyPath := keyName(k.Value)
		if path != "" {
			keyPath = path + "." + keyPath
		}
		if first, dup := set[k.Value]; dup {
			if !p.merged {
				d.fail(k, keyPath, "already set on line %d", first.Line)
			}
			continue
		}
		set[k.Value] = k
		fn(k.Value, keyPath, k, p.value)
	}
	return true
}

// pair is one key and its value in a mapping; merged pairs come from a "<<"
// merge key and give way to the mapping's own keys.
type pair struct {
	key, value *yaml.Node
	merged     bool
}

func (d *decoder) section(path string, n *yaml.Node, v reflect.Value) {
	fields := fieldsOf(v.Type())
	d.entries(path, n, func(key, keyPath string, keyNode, value *yaml.Node) {
		i, ok := fields[key]
		if !ok {
			d.fail(keyNode, keyPath, "unknown key")
			return
		}
		d.value(keyPath, value, v.Field(i))
	})
}

// pairs lists a mapping's keys: its own first, then those of the mappings it
// merges with "<<", earlier merge sources before later ones, so that the first
// of a key to be set wins, as in yaml.v3.
func (d *decoder) pairs(path string, n *yaml.Node) []pair {
	var own, merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if !isMerge(k) {
			own = append(own, pair{key: k, value: v})
			continue
		}
		if v.Kind == yaml.AliasNode && v.Alias != nil {
			v = v.Alias
		}
		sources := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			sources = v.Content
		}
		for _, src := range sources {
			if src.Kind == yaml.AliasNode && src.Alias != nil {
				src = src.Alias
			}
			switch {
			case src.Kind == yaml.MappingNode && !d.spend(src, path, len(src.Content)/2):
				// Merges of merges multiply like aliases do.
				return append(own, merged...)
			case src.Kind != yaml.MappingNode:
				d.fail(k, path, "<<: want a mapping or a list of mappings to merge, not %s", describe(src))
			case d.merging[src]:
				d.fail(k, path, "<<: a mapping cannot merge itself")
			default:
				d.merging[src] = true
				for _, p := range d.pairs(path, src) {
					merged = append(merged, pair{key: p.key, value: p.value, merged: true})
				}
				delete(d.merging, src)
			}
		}
	}
	return append(own, merged...)
}

// keyName is a key as a message shows it: quoted when it is not a plain
// word, so that a stray key cannot break the message over lines.
func keyName(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r == ' ' || r == '"' || !unicode.IsPrint(r) }) {
		return quote(s)
	}
	return s
}

// isMerge is yaml.v3's test for a "<<" merge key.
func isMerge(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" &&
		(k.Tag == "" || k.Tag == "!" || k.Tag == "!!merge" || k.Tag == "tag:yaml.org,2002:merge")
}

// fieldsOf maps a struct's YAML keys to its field indexes, by yaml.v3's
// rules: the tag's name, else the lowercased field name; "-" and unexported
// fields are not keys.
func fieldsOf(t reflect.Type) map[string]int {
	fields := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = i
	}
	return fields
}

// expected says, in the configuration's words, what a key of type t takes.
func expected(t reflect.Type) string {
	switch t {
	case durationType:
		return "a duration (e.g. 30s)"
	case sizeType:
		return "a size (e.g. 100MiB)"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer >= 0"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	}
	return "a single value"
}

// describe names what the file holds where something else was wanted.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return quote(n.Value)
}

// quote quotes a value from the file, shortened: the line number finds the rest.
func quote(s string) string {
	if r := []rune(s); len(r) > 40 {
		s = string(r[:40]) + "…"
	}
	return strconv.Quote(s)
}
