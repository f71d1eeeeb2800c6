package config

import (
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// keyPath is a key of the configuration as a user writes it
// (pools[0].machines[0].ip) and the Go type that holds it.
type keyPath struct {
	path string
	typ  reflect.Type
}

// keyPaths lists every key path under typ from its yaml tags; a list's first
// element stands for all of them. Derived, not written out, so that a new
// field is covered the day it is added.
func keyPaths(t *testing.T, typ reflect.Type, prefix string) []keyPath {
	t.Helper()
	var out []keyPath
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			t.Fatalf("%s.%s has no yaml key", typ, f.Name)
		}
		p := name
		if prefix != "" {
			p = prefix + "." + name
		}
		out = append(out, keyPath{p, f.Type})
		ft := f.Type
		if ft.Kind() == reflect.Map {
			p += ".k" // any key of the user's stands for all of them
			ft = ft.Elem()
			out = append(out, keyPath{p, ft})
		}
		if ft.Kind() == reflect.Slice {
			p += "[0]"
			ft = ft.Elem()
			out = append(out, keyPath{p, ft})
		}
		if ft.Kind() == reflect.Struct {
			out = append(out, keyPaths(t, ft, p)...)
		}
	}
	return out
}

// wrongValue is a value of the wrong type for a key and the complaint that
// must follow the key path.
type wrongValue struct {
	value *yaml.Node
	want  string
}

func wrongValues(t *testing.T, k keyPath) []wrongValue {
	t.Helper()
	scalar := func(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Value: s} }
	list := &yaml.Node{Kind: yaml.SequenceNode, Style: yaml.FlowStyle, Content: []*yaml.Node{scalar("a")}}
	mapping := &yaml.Node{Kind: yaml.MappingNode, Style: yaml.FlowStyle, Content: []*yaml.Node{scalar("a"), scalar("b")}}
	switch {
	case k.typ == reflect.TypeFor[time.Duration]():
		return []wrongValue{
			{scalar("fast"), `"fast" is not a duration (e.g. 30s)`},
			{scalar("30"), `"30" is not a duration (e.g. 30s)`},
			{list, "want a duration (e.g. 30s), not a list"},
		}
	case k.typ == reflect.TypeFor[Size]():
		return []wrongValue{
			{scalar("lots"), `"lots" is not a size (e.g. 100MiB)`},
			{mapping, "want a size (e.g. 100MiB), not a mapping"},
		}
	case k.typ.Kind() == reflect.Int:
		return []wrongValue{
			{scalar("three"), `"three" is not an integer`},
			{scalar("2.5"), `"2.5" is not an integer`},
			{scalar("99999999999999999999"), `"99999999999999999999" is out of range`},
			{list, "want an integer, not a list"},
		}
	case k.typ.Kind() == reflect.Bool:
		return []wrongValue{
			{scalar("maybe"), `"maybe" is not true or false`},
			{mapping, "want true or false, not a mapping"},
		}
	case k.typ.Kind() == reflect.String:
		// Any scalar is a string; only a list or a mapping is wrong.
		return []wrongValue{
			{list, "want a string, not a list"},
			{mapping, "want a string, not a mapping"},
		}
	case k.typ.Kind() == reflect.Slice:
		return []wrongValue{
			{scalar("x"), `want a list, not "x"`},
			{mapping, "want a list, not a mapping"},
		}
	case k.typ.Kind() == reflect.Struct, k.typ.Kind() == reflect.Map:
		return []wrongValue{
			{scalar("x"), `want a mapping (key: value), not "x"`},
			{list, "want a mapping (key: value), not a list"},
		}
	}
	t.Fatalf("%s: no wrong value for a %s; teach Decode and this test about it", k.path, k.typ)
	return nil
}

// documentAt builds a configuration holding value at path and nothing else.
func documentAt(t *testing.T, path string, value *yaml.Node, style yaml.Style) string {
	t.Helper()
	segs := regexp.MustCompile(`\[0\]|[^.\[]+`).FindAllString(path, -1)
	n := value
	for i := len(segs) - 1; i >= 0; i-- {
		if segs[i] == "[0]" {
			n = &yaml.Node{Kind: yaml.SequenceNode, Style: style, Content: []*yaml.Node{n}}
		} else {
			key := &yaml.Node{Kind: yaml.ScalarNode, Value: segs[i]}
			n = &yaml.Node{Kind: yaml.MappingNode, Style: style, Content: []*yaml.Node{key, n}}
		}
	}
	out, err := yaml.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// goWords are what a message would hold if a Go type leaked into it.
var goWords = regexp.MustCompile(`time\.|\bint(8|16|32|64)?\b|\buint|\[\]|config\.|\bbool\b|\bSize\b|!!|unmarshal|struct|reflect`)

func TestTypeErrorsNameTheKey(t *testing.T) {
	paths := keyPaths(t, reflect.TypeFor[Config](), "")
	seen := map[string]bool{}
	for _, k := range paths {
		seen[k.path] = true
	}
	for _, p := range []string{"listen", "fleet.health_interval", "guest.upload_max_size", "azure.emulator.lro_delay",
		"azure.dns_servers[0]", "pools[0]", "pools[0].machines[0].tags[0]"} {
		if !seen[p] {
			t.Fatalf("key paths miss %s: %v", p, paths)
		}
	}
	line := regexp.MustCompile(`^line (\d+): `)
	for _, k := range paths {
		for _, w := range wrongValues(t, k) {
			for _, style := range []yaml.Style{0, yaml.FlowStyle} {
				doc := documentAt(t, k.path, w.value, style)
				err := Decode([]byte(doc), Default())
				if err == nil {
					t.Errorf("%q: accepted", doc)
					continue
				}
				msg := err.Error()
				m := line.FindStringSubmatch(msg)
				if m == nil || strings.TrimPrefix(msg, m[0]) != k.path+": "+w.want {
					t.Errorf("%q:\n got %s\nwant line N: %s: %s", doc, msg, k.path, w.want)
					continue
				}
				if goWords.MatchString(msg) {
					t.Errorf("%q: %s names a Go type", doc, msg)
				}
				// In block style the line must hold the key, or the list item.
				n, _ := strconv.Atoi(m[1])
				lines := strings.Split(doc, "\n")
				holds := k.path[strings.LastIndexAny(k.path, ".]")+1:] + ":"
				if strings.HasSuffix(k.path, "]") {
					holds = "- "
				}
				if n < 1 || n > len(lines) || style == 0 && !strings.Contains(lines[n-1], holds) {
					t.Errorf("%q: %s points at the wrong line", doc, msg)
				}
				if style == yaml.FlowStyle && n != 1 {
					t.Errorf("%q: %s: want line 1", doc, msg)
				}
			}
		}
	}
}

func TestTypeErrorsOnOneLine(t *testing.T) {
	// Flow mappings put several keys on a line; the key path tells them apart.
	err := Decode([]byte(`fleet: {lease_ttl: 15s, reconcile_interval: fast, health_interval: 5s}
pools: [{name: a, initial_size: three, tags: win10, reserved: maybe}]
guest: {agent_port: 8000, upload_max_size: lots}
`), Default())
	want := `line 1: fleet.reconcile_interval: "fast" is not a duration (e.g. 30s)
line 2: pools[0].initial_size: "three" is not an integer
line 2: pools[0].tags: want a list, not "win10"
line 2: pools[0].reserved: "maybe" is not true or false
line 3: guest.upload_max_size: "lots" is not a size (e.g. 100MiB)`
	if err == nil || err.Error() != want {
		t.Fatalf("err =\n%v\nwant\n%s", err, want)
	}
}

func TestDecodeRejectsDuplicateKeys(t *testing.T) {
	for y, want := range map[string]string{
		"fleet: {reconcile_interval: 5s, reconcile_interval: 6s}\n": "line 1: fleet.reconcile_interval: already set on line 1",
		"fleet: {}\nlisten: 127.0.0.1:1\nfleet: {}\n":               "line 3: fleet: already set on line 1",
	} {
		if err := Decode([]byte(y), Default()); err == nil || err.Error() != want {
			t.Errorf("%q: err = %v, want %s", y, err, want)
		}
	}
}

func TestDecodeOtherShapes(t *testing.T) {
	for y, want := range map[string]string{
		"just words\n":                     `line 1: want a mapping (key: value), not "just words"`,
		"{[a]: 1}\n":                       "line 1: a key must be a name, not a list",
		"pools: [{<<: 3}]\n":               `line 1: pools[0]: <<: want a mapping or a list of mappings to merge, not "3"`,
		"pools: [&p {<<: *p}]\n":           "line 1: pools[0]: <<: a mapping cannot merge itself",
		"fleet: {\"a\\nb\": 1, \"\": 2}\n": "line 1: fleet.\"a\\nb\": unknown key\nline 1: fleet.\"\": unknown key",
		"pools: &x [*x]\n":                 "line 1: pools[0]: want a mapping (key: value), not a list",
		"guest: {agent_port: 0x1_0000_0000_0000_0000}\n":                     `line 1: guest.agent_port: "0x1_0000_0000_0000_0000" is not an integer`,
		"guest: {upload_max_size: 9999999999999GiB}\n":                       `line 1: guest.upload_max_size: "9999999999999GiB" is too large`,
		"azure: {region: [" + strings.Repeat("x", 100) + "]}\n":              "line 1: azure.region: want a string, not a list",
		"azure: {emulator: {lro_delay: " + strings.Repeat("y", 100) + "}}\n": `line 1: azure.emulator.lro_delay: "` + strings.Repeat("y", 40) + `…" is not a duration (e.g. 30s)`,
	} {
		if err := Decode([]byte(y), Default()); err == nil || err.Error() != want {
			t.Errorf("%q:\n got %v\nwant %s", y, err, want)
		}
	}
}

func TestDecodeAnchorsAndMerges(t *testing.T) {
	cfg := Default()
	err := Decode([]byte(`
pools:
  - &base {name: a, provider: azure, platform: windows, image: i, tags: [win10], max_size: 2}
  - <<: *base
    name: b
  - {<<: [{name: c, arch: x86}, *base], tags: ~}
fleet:
  reconcile_interval: &t 7s
  health_interval: *t
guest: {upload_max_size: 2KiB}
`), cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Pools
	if len(p) != 3 || p[1].Name != "b" || p[1].Provider != "azure" || len(p[1].Tags) != 1 || p[1].MaxSize != 2 ||
		p[2].Name != "c" || p[2].Arch != "x86" || p[2].Image != "i" || p[2].Tags != nil {
		t.Fatalf("pools = %+v", p)
	}
	if cfg.Fleet.ReconcileInterval != 7*time.Second || cfg.Fleet.HealthInterval != 7*time.Second ||
		cfg.Fleet.LeaseTTL != 15*time.Second || cfg.Guest.UploadMaxSize != 2048 {
		t.Fatalf("fleet = %+v, guest = %+v", cfg.Fleet, cfg.Guest)
	}
}

func TestDecodeBoundsAliasExpansion(t *testing.T) {
	many := func(first, rest string) string { return "[" + first + strings.Repeat(", "+rest, 999) + "]" }
	var merges strings.Builder
	merges.WriteString("pools:\n  - &m0 {name: a}\n")
	for i := 1; i <= 7; i++ {
		fmt.Fprintf(&merges, "  - &m%d {<<: [*m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d, *m%[2]d]}\n", i, i-1)
	}
	for name, doc := range map[string]string{
		// Each level multiplies: 1000 pools × 1000 machines × 1000 tags, from
		// a document of a few kilobytes.
		"aliases": "azure: {dns_servers: &t " + many("x", "x") + "}\n" +
			"pools: " + many("&p {name: a, machines: "+many("&m {label: l, tags: *t}", "*m")+"}", "*p") + "\n",
		// Ten merges of ten merges of … a mapping: 10^7 keys.
		"merges": merges.String(),
	} {
		start := time.Now()
		err := Decode([]byte(doc), Default())
		if err == nil || !strings.Contains(err.Error(), "expands to more than") {
			t.Errorf("%s: err = %.300v", name, err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: took %s", name, d)
		}
	}
}
