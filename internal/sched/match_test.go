package sched

import (
	"strings"
	"testing"
	"time"
)

// Every rule of CAPE's matching (reference cape.md §2), and the fixes: a
// free x64 machine serves an x86 task when the x86 ones are busy, and an
// unserviceable task is told which requirement nothing meets.
func TestPick(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	free := func(label, platform, arch string, tags ...string) Offer {
		return Offer{Label: label, Pool: "p", Platform: platform, Arch: arch, Tags: tags, Free: true}
	}
	busy := func(o Offer) Offer { o.Free = false; return o }
	reserved := func(o Offer) Offer { o.Reserved = true; return o }
	used := func(o Offer, at time.Time) Offer { o.LastUsed = at; return o }
	template := Offer{Pool: "win10x64", Platform: "windows", Arch: "x64", Tags: []string{"win10"}}

	w10 := free("w10", "windows", "x64", "win10")
	w7x86 := free("w7", "windows", "x86", "win7")
	lin := free("lin", "linux", "x64", "ubuntu")
	office := free("office", "windows", "x64", "win10", "office")

	mt := Matcher{PackageTags: map[string][]string{"doc": {"office2016", "office"}, "exe": nil}}
	tests := []struct {
		name    string
		need    Need
		offers  []Offer
		want    string // label picked; "" with verdict
		verdict Verdict
		unmet   string // part of the explanation
	}{
		{"any machine", Need{}, []Offer{w10}, "w10", Serve, ""},
		{"label: that machine only", Need{Label: "lin"}, []Offer{w10, lin}, "lin", Serve, ""},
		{"label busy: wait, no other", Need{Label: "lin"}, []Offer{w10, busy(lin)}, "", Wait, ""},
		{"label unknown", Need{Label: "nope"}, []Offer{w10}, "", Unserviceable, `no machine is labelled "nope"`},
		{"label may be reserved", Need{Label: "w10"}, []Offer{reserved(w10)}, "w10", Serve, ""},
		{"reserved left out without a label", Need{}, []Offer{reserved(w10), lin}, "lin", Serve, ""},
		{"only reserved, no tags: unserviceable", Need{}, []Offer{reserved(w10)}, "", Unserviceable, "reserved"},
		{"only reserved, with tags: reserved tried", Need{Tags: []string{"win10"}}, []Offer{reserved(w10)}, "w10", Serve, ""},
		{"reserved fallback not taken while a non-reserved match is busy",
			Need{Tags: []string{"win10"}}, []Offer{busy(office), reserved(w10)}, "", Wait, ""},
		{"platform", Need{Platform: "linux"}, []Offer{w10, lin}, "lin", Serve, ""},
		{"platform nowhere", Need{Platform: "darwin"}, []Offer{w10, lin}, "", Unserviceable, "no machine has platform darwin"},
		{"x64 needs x64", Need{Tags: []string{"x64"}}, []Offer{w7x86, w10}, "w10", Serve, ""},
		{"x64 with only x86", Need{Tags: []string{"x64"}}, []Offer{w7x86}, "", Unserviceable, "no x64 machine"},
		{"x86 prefers x86", Need{Tags: []string{"x86"}}, []Offer{w10, w7x86}, "w7", Serve, ""},
		{"x86 served by x64", Need{Tags: []string{"x86"}}, []Offer{w10}, "w10", Serve, ""},
		{"x86 busy: a free x64 serves", Need{Tags: []string{"x86"}}, []Offer{busy(w7x86), w10}, "w10", Serve, ""},
		{"url task: x86 and x64", Need{Tags: []string{"x86", "x64"}}, []Offer{w10, w7x86}, "w7", Serve, ""},
		{"every tag", Need{Tags: []string{"win10", "office"}}, []Offer{w10, office}, "office", Serve, ""},
		{"a tag nowhere", Need{Tags: []string{"win10", "excel"}}, []Offer{w10, office}, "", Unserviceable, "tag excel is on no pool"},
		{"package needs any of its tags", Need{Package: "doc"}, []Offer{w10, office}, "office", Serve, ""},
		{"package tags nowhere", Need{Package: "doc"}, []Offer{w10}, "", Unserviceable, "package doc needs one of the tags office2016, office"},
		{"package without tags", Need{Package: "exe"}, []Offer{w10}, "w10", Serve, ""},
		{"least recently used first", Need{}, []Offer{used(free("a", "windows", "x64"), t0.Add(time.Hour)), used(free("b", "windows", "x64"), t0)}, "b", Serve, ""},
		{"never used before used", Need{}, []Offer{used(free("a", "windows", "x64"), t0), free("b", "windows", "x64")}, "b", Serve, ""},
		{"free before busy", Need{}, []Offer{busy(used(free("a", "windows", "x64"), time.Time{})), used(free("b", "windows", "x64"), t0)}, "b", Serve, ""},
		{"all busy: wait", Need{Tags: []string{"win10"}}, []Offer{busy(w10)}, "", Wait, ""},
		{"a pool could make one: wait", Need{Tags: []string{"win10"}}, []Offer{template}, "", Wait, ""},
		{"a pool's tags name what it can serve", Need{Tags: []string{"win7"}}, []Offer{template}, "", Unserviceable, "tag win7 is on no pool"},
		{"nothing configured", Need{}, nil, "", Unserviceable, "no machine is configured"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, v, unmet := mt.Pick(tt.need, tt.offers)
			if v != tt.verdict || got.Label != tt.want || !strings.Contains(unmet, tt.unmet) {
				t.Errorf("Pick = %q, verdict %d, unmet %q; want %q, verdict %d, unmet containing %q",
					got.Label, v, unmet, tt.want, tt.verdict, tt.unmet)
			}
		})
	}
}
