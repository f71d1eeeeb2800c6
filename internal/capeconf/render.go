package capeconf

import (
	"bytes"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/sandfleet/sandfleet/internal/config"
)

// YAML renders the imported configuration: only the keys the import set,
// in config.Config's order, each with a comment naming the CAPE options it
// came from; the warnings at the top; at the end every CAPE option with no
// sandfleet key of its own, with the reason.
func (r *Result) YAML() ([]byte, error) {
	var out bytes.Buffer
	r.header(&out)
	body := r.node(reflect.ValueOf(*r.Config), "")
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(body); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	out.Write(buf.Bytes())
	r.footer(&out)
	return out.Bytes(), nil
}

func (r *Result) header(w *bytes.Buffer) {
	fmt.Fprintf(w, "# sandfleet configuration made by `sandfleet import-cape` from the CAPE configuration in %s:\n", r.Dir)
	for _, f := range r.Files {
		var rel []string
		for _, s := range f.Sources {
			if p, err := filepath.Rel(r.Dir, s); err == nil {
				s = p
			}
			rel = append(rel, s)
		}
		fmt.Fprintf(w, "#   %s from %s\n", f.Name, strings.Join(rel, ", "))
	}
	fmt.Fprintf(w, "# Machinery imported: %s.\n", orNone(strings.Join(r.Machinery, ", ")))
	comment(w, "", "", "A key's comment names the CAPE options it came from; the CAPE options with no sandfleet "+
		"key of their own are listed at the end, each with the reason. No secret is copied: where CAPE "+
		"holds one, a file is named for you to put it in.")
	for _, s := range r.Warnings {
		comment(w, "", "  ", "WARNING: "+s)
	}
	w.WriteString("\n")
}

func (r *Result) footer(w *bytes.Buffer) {
	if len(r.Notes) == 0 {
		return
	}
	pos := map[*Option][3]int{}
	for fi, f := range r.Files {
		secs := f.Sections
		if f.Defaults != nil {
			secs = append([]*Section{f.Defaults}, secs...)
		}
		for si, s := range secs {
			for oi, o := range s.Options {
				pos[o] = [3]int{fi, si, oi}
			}
		}
	}
	notes := append([]Note(nil), r.Notes...)
	sort.SliceStable(notes, func(i, j int) bool {
		a, b := pos[notes[i].Option], pos[notes[j].Option]
		for k := range a {
			if a[k] != b[k] {
				return a[k] < b[k]
			}
		}
		return false
	})
	w.WriteString("\n# CAPE options with no sandfleet key of their own, and why:\n")
	file := ""
	var reasons []string
	byReason := map[string][]string{}
	flush := func() {
		for _, why := range reasons {
			comment(w, "  ", "     ", strings.Join(byReason[why], ", ")+": "+why)
		}
		reasons, byReason = nil, map[string][]string{}
	}
	for _, n := range notes {
		if n.File != file {
			flush()
			file = n.File
			fmt.Fprintf(w, "#\n# %s\n", file)
		}
		if _, ok := byReason[n.Reason]; !ok {
			reasons = append(reasons, n.Reason)
		}
		byReason[n.Reason] = append(byReason[n.Reason], n.Name)
	}
	flush()
}

// comment writes text as # lines of about 100 columns at most, the first
// indented by first, the others by cont; a word (an option's name) is never
// split.
func comment(w *bytes.Buffer, first, cont, text string) {
	const width = 100
	line, empty := "#"+first, true
	for _, word := range strings.Fields(text) {
		if !empty && len(line)+1+len(word) > width {
			w.WriteString(line + "\n")
			line = "#" + cont
		}
		line += " " + word
		empty = false
	}
	w.WriteString(line + "\n")
}

// comment is a key's line comment: its sources, then its remarks.
func (k *keyInfo) comment() string {
	s := strings.Join(k.sources, ", ")
	if len(k.remarks) > 0 {
		if s != "" {
			s += ": "
		}
		s += strings.Join(k.remarks, "; ")
	}
	return s
}

// wanted reports whether the import set the key at path or one below it.
func (r *Result) wanted(path string) bool {
	for p := range r.keys {
		if p == path || strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			return true
		}
	}
	return false
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	sizeType     = reflect.TypeFor[config.Size]()
)

// node renders v, the value at path, walking config.Config by its yaml
// tags so that the YAML has the keys and order sandfleet reads.
func (r *Result) node(v reflect.Value, path string) *yaml.Node {
	scalar := func(tag, value string) *yaml.Node {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}
	}
	switch {
	case v.Type() == durationType:
		return scalar("!!str", formatDuration(time.Duration(v.Int())))
	case v.Type() == sizeType:
		return scalar("!!int", strconv.FormatInt(v.Int(), 10))
	}
	switch v.Kind() {
	case reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		t := v.Type()
		for i := range t.NumField() {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			p := tag
			if path != "" {
				p = path + "." + tag
			}
			if !r.wanted(p) {
				continue
			}
			k := scalar("", tag)
			val := r.node(v.Field(i), p)
			if ki := r.keys[p]; ki != nil {
				k.HeadComment = strings.Join(ki.head, "\n")
				if c := ki.comment(); c != "" && (val.Kind == yaml.ScalarNode || val.Style == yaml.FlowStyle) {
					val.LineComment = c
				} else if c != "" {
					k.LineComment = c
				}
			}
			n.Content = append(n.Content, k, val)
		}
		return n
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		if v.Type().Elem().Kind() != reflect.Struct {
			n.Style = yaml.FlowStyle
		}
		for i := range v.Len() {
			p := fmt.Sprintf("%s[%d]", path, i)
			item := r.node(v.Index(i), p)
			if ki := r.keys[p]; ki != nil {
				item.HeadComment = strings.Join(ki.head, "\n")
			}
			n.Content = append(n.Content, item)
		}
		return n
	case reflect.String:
		return scalar("!!str", v.String())
	case reflect.Bool:
		return scalar("!!bool", strconv.FormatBool(v.Bool()))
	case reflect.Int, reflect.Int64:
		return scalar("!!int", strconv.FormatInt(v.Int(), 10))
	}
	return scalar("!!null", "")
}

// formatDuration writes whole seconds as CAPE's options are: 200s, not 3m20s.
func formatDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
