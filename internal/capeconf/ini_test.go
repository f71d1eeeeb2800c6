package capeconf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func parse(t *testing.T, text string) *File {
	t.Helper()
	f := &File{Name: "t.conf"}
	if err := f.Parse("t.conf", []byte(text)); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return f
}

// TestParseAsConfigparser pins the configparser rules CAPE's files rely on.
func TestParseAsConfigparser(t *testing.T) {
	f := parse(t, "\ufeff# comment\n; another\n[az]\n"+
		"Region_Name = eastus\n"+ // keys are lower-cased
		"interface = eth1 # not a comment\n"+ // inline # is part of the value
		"instance_type: Standard_D2s_v5\n"+ // ':' is a delimiter too
		"url = http://x:8000/a=b\n"+ // the first delimiter splits
		"dns = 1.1.1.1,\n"+
		"    8.8.8.8\n"+ // continuation
		"\n"+
		"  # a comment inside a continued value is skipped\n"+
		"    9.9.9.9\n"+ // a blank line inside it is kept
		"\n\n"+
		"empty =\n"+
		"  [indented] = x\n"+ // an indented line after a value-less key continues it
		"[other]\n"+
		"  spaced = 1\n")
	want := map[string]string{
		"region_name":   "eastus",
		"interface":     "eth1 # not a comment",
		"instance_type": "Standard_D2s_v5",
		"url":           "http://x:8000/a=b",
		"dns":           "1.1.1.1,\n8.8.8.8\n\n9.9.9.9",
		"empty":         "\n[indented] = x",
	}
	az := f.Section("az")
	for k, v := range want {
		o := az.Option(k)
		if o == nil {
			t.Errorf("az.%s missing", k)
			continue
		}
		if o.Raw != v {
			t.Errorf("az.%s = %q, want %q", k, o.Raw, v)
		}
	}
	if o := f.Section("other").Option("spaced"); o == nil || o.Raw != "1" || o.Line != 18 {
		t.Errorf("other.spaced = %+v, want 1 on line 18", o)
	}
}

func TestParseErrors(t *testing.T) {
	for name, text := range map[string]string{
		"before section":   "key = value\n",
		"no delimiter":     "[a]\njust words\n",
		"empty key":        "[a]\n= value\n",
		"repeated section": "[a]\nx = 1\n[a]\ny = 2\n",
		"repeated option":  "[a]\nx = 1\nX = 2\n",
	} {
		f := &File{}
		err := f.Parse("t.conf", []byte(text))
		if err == nil || !strings.Contains(err.Error(), "t.conf:") {
			t.Errorf("%s: err = %v, want one naming t.conf:line", name, err)
		}
	}
}

func TestInterpolation(t *testing.T) {
	f := parse(t, "[DEFAULT]\nbase = /opt/cape\n"+
		"[a]\n"+
		"rg = sandbox\n"+
		"vnet = %(rg)s-vnet\n"+
		"nested = %(vnet)s/%(base)s\n"+
		"percent = 100%%\n"+
		"env = %(ENV:Cape_Token)s\n"+
		"missing = %(nope)s\n"+
		"bad = 50%\n"+
		"loop = %(loop)s\n")
	env := func(k string) (string, bool) {
		if k == "Cape_Token" {
			return "tok%en", true // CAPE escapes it: taken literally
		}
		return "", false
	}
	a := f.Section("a")
	for key, want := range map[string]string{
		"vnet":    "sandbox-vnet",
		"nested":  "sandbox-vnet//opt/cape",
		"percent": "100%",
		"env":     "tok%en",
	} {
		got, err := f.Value(a.Option(key), env)
		if err != nil || got != want {
			t.Errorf("%s = %q, %v; want %q", key, got, err, want)
		}
	}
	for _, key := range []string{"missing", "bad", "loop"} {
		if got, err := f.Value(a.Option(key), env); err == nil {
			t.Errorf("%s = %q, want an error", key, got)
		}
	}
	if got := EnvRefs("%(ENV:A)s-%(env:b)s-%(c)s"); strings.Join(got, ",") != "A,b" {
		t.Errorf("EnvRefs = %v", got)
	}
}

// TestReadLayers: default/<name>.conf.default, then <name>.conf, then
// <name>.conf.d/*.conf in name order, as CAPE's Config reads them.
func TestReadLayers(t *testing.T) {
	dir := t.TempDir()
	write := func(rel, text string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("default/az.conf.default", "[az]\nregion_name = <region_name>\nspot_instances = false\nscale_sets = cuckoo1\n")
	write("az.conf", "[az]\nregion_name = eastus\n")
	write("az.conf.d/20-b.conf", "[az]\nspot_instances = true\n")
	write("az.conf.d/10-a.conf", "[az]\nspot_instances = maybe\n[win10]\narch = x64\n")
	f, ok, err := ReadLayers(dir, "az")
	if err != nil || !ok {
		t.Fatalf("ReadLayers: %v, %v", ok, err)
	}
	az := f.Section("az")
	for key, want := range map[string]string{"region_name": "eastus", "spot_instances": "true", "scale_sets": "cuckoo1"} {
		if o := az.Option(key); o == nil || o.Raw != want {
			t.Errorf("az.%s = %+v, want %q", key, o, want)
		}
	}
	if f.Section("win10") == nil || len(f.Sources) != 4 || !strings.HasSuffix(f.Sources[2], "10-a.conf") {
		t.Errorf("sources %v, sections %v", f.Sources, f.Sections)
	}
	if _, ok, _ := ReadLayers(dir, "kvm"); ok {
		t.Error("kvm: no file, yet reported present")
	}
}
