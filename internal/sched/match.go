package sched

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// Matching is CAPE's (reference cape.md §2), in one place: the scheduler
// picks with it, and it says why nothing could ever serve a task.
//
//   - A task naming a machine gets that machine only, reserved or not;
//     otherwise reserved machines are left out — unless nothing else matches
//     and the task has tags: then they are tried too.
//   - The platform, when given, is equal.
//   - Architecture tags: x86 is served by x86 or x64 machines, x86 first; x64
//     needs x64.
//   - Every other tag is on the machine.
//   - A package may need one of several tags (the os_version of CAPE's
//     web.conf [packages]); any one will do.
//   - Of the free machines that match, the least recently used goes first.

// Need is what a task asks of a machine.
type Need struct {
	Label    string   // one machine by label; "" = any
	Platform string   // "" = any
	Tags     []string // x86 / x64 among them are architecture tags
	Package  string
}

// Offer is a machine as matching sees it: a machine row, or what a pool is
// configured to make (Label "" then: it has no machine of that name yet).
type Offer struct {
	Label    string
	Pool     string
	Platform string
	Arch     string
	Tags     []string
	Reserved bool
	// Free: a ready machine, which a task may have now. The others (busy,
	// reimaging, a pool's template) could serve it later.
	Free     bool
	LastUsed time.Time // zero if never used
}

// Matcher applies the rules. PackageTags maps a package to the tags one of
// which a machine needs to run it (scheduler.package_tags).
type Matcher struct {
	PackageTags map[string][]string
}

// step is one rule: keep says whether an offer passes it; unmet says what
// no offer met.
type step struct {
	keep  func(Offer) bool
	unmet func() string
}

// steps are the rules for n, in the order an explanation names them.
func (mt Matcher) steps(n Need, reserved bool) []step {
	archs, tags := splitArch(n.Tags)
	var out []step
	if n.Label != "" {
		out = append(out, step{
			keep:  func(o Offer) bool { return o.Label == n.Label },
			unmet: func() string { return fmt.Sprintf("no machine is labelled %q", n.Label) },
		})
	} else if !reserved {
		out = append(out, step{
			keep:  func(o Offer) bool { return !o.Reserved },
			unmet: func() string { return "every machine is reserved (reserved machines serve tasks that name them)" },
		})
	}
	if n.Platform != "" {
		out = append(out, step{
			keep:  func(o Offer) bool { return o.Platform == n.Platform },
			unmet: func() string { return fmt.Sprintf("no machine has platform %s", n.Platform) },
		})
	}
	if len(archs) > 0 {
		out = append(out, step{
			keep: func(o Offer) bool { return archServes(archs, o.Arch) },
			unmet: func() string {
				if slices.Contains(archs, "x86") {
					return "no x86 or x64 machine"
				}
				return "no " + strings.Join(archs, " ") + " machine"
			},
		})
	}
	for _, tag := range tags {
		out = append(out, step{
			keep:  func(o Offer) bool { return slices.Contains(o.Tags, tag) },
			unmet: func() string { return fmt.Sprintf("tag %s is on no pool", tag) },
		})
	}
	if need := mt.PackageTags[n.Package]; len(need) > 0 {
		out = append(out, step{
			keep: func(o Offer) bool {
				return slices.ContainsFunc(need, func(t string) bool { return slices.Contains(o.Tags, t) })
			},
			unmet: func() string {
				return fmt.Sprintf("package %s needs one of the tags %s, on no machine", n.Package, strings.Join(need, ", "))
			},
		})
	}
	return out
}

// splitArch separates the architecture tags from the others.
func splitArch(tags []string) (archs, rest []string) {
	for _, t := range tags {
		if t == "x86" || t == "x64" {
			archs = append(archs, t)
		} else {
			rest = append(rest, t)
		}
	}
	return archs, rest
}

// archServes reports whether a machine of arch serves a task asking archs.
func archServes(archs []string, arch string) bool {
	if slices.Contains(archs, "x86") {
		return arch == "x86" || arch == "x64"
	}
	return slices.Contains(archs, arch)
}

// filter keeps the offers passing every step; at the first step that keeps
// none it stops and returns what was unmet.
func filter(offers []Offer, steps []step) (kept []Offer, unmet string) {
	kept = offers
	for _, s := range steps {
		var next []Offer
		for _, o := range kept {
			if s.keep(o) {
				next = append(next, o)
			}
		}
		if len(next) == 0 {
			return nil, s.unmet()
		}
		kept = next
	}
	return kept, ""
}

// Candidates returns the offers that could serve n, best first: without
// reserved machines, or — when none could, n names no machine and has tags —
// with them. unmet says what no offer met when there is none.
func (mt Matcher) Candidates(n Need, offers []Offer) (best []Offer, unmet string) {
	if len(offers) == 0 {
		return nil, "no machine is configured"
	}
	kept, unmet := filter(offers, mt.steps(n, false))
	if len(kept) == 0 && n.Label == "" && len(n.Tags) > 0 {
		if withReserved, _ := filter(offers, mt.steps(n, true)); len(withReserved) > 0 {
			kept, unmet = withReserved, ""
		}
	}
	if len(kept) == 0 {
		return nil, unmet
	}
	archs, _ := splitArch(n.Tags)
	preferX86 := slices.Contains(archs, "x86")
	best = slices.Clone(kept)
	sort.SliceStable(best, func(i, j int) bool {
		a, b := best[i], best[j]
		if a.Free != b.Free {
			return a.Free
		}
		if preferX86 && (a.Arch == "x86") != (b.Arch == "x86") {
			return a.Arch == "x86"
		}
		if !a.LastUsed.Equal(b.LastUsed) {
			return a.LastUsed.Before(b.LastUsed)
		}
		return a.Label < b.Label
	})
	return best, ""
}

// Verdict is what matching says of a task now.
type Verdict int

// Verdicts.
const (
	Serve         Verdict = iota // a free machine serves it
	Wait                         // machines (or pools) could, none is free now
	Unserviceable                // nothing configured ever could
)

// Pick decides for n over every offer — free machines, busy ones and the
// pools' templates: the free machine to give it, or that it waits, or that
// nothing could ever serve it and which requirement nothing meets.
func (mt Matcher) Pick(n Need, offers []Offer) (Offer, Verdict, string) {
	best, unmet := mt.Candidates(n, offers)
	switch {
	case len(best) == 0:
		return Offer{}, Unserviceable, unmet
	case best[0].Free:
		return best[0], Serve, ""
	}
	return Offer{}, Wait, ""
}
