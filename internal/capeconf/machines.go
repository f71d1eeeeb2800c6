package capeconf

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/sandfleet/sandfleet/internal/config"
)

// machine is one kvm.conf or physical.conf machine on its way to a pool.
type machine struct {
	sec      *Section
	m        config.StaticMachine
	reserved bool
	snapshot string
	rs       int                // its claim in mapper.rs
	used     map[string]*Option // field → the option it came from
	remarks  map[string]string
}

// machines maps kvm.conf or physical.conf (kind "kvm" or "physical") to
// pools. A KVM machine becomes a libvirt pool's machine, reverted to its
// snapshot after each use; a physical machine a static pool's, reused as it
// is unless the operator writes a reset_command (CAPE re-imaged them
// through FOG).
func (m *mapper) machines(f *File, kind string) {
	main := f.Section(kind)
	if main == nil {
		m.warn(fmt.Sprintf("%s has no [%s] section: no machines imported", f.Name, kind))
		return
	}
	listed := map[string]bool{kind: true, "DEFAULT": true}
	if kind == "physical" {
		listed["fog"] = true
	}
	listOpt := main.Option("machines")
	var ids []string
	if listOpt != nil {
		if v, ok := m.value(f, listOpt); ok {
			ids = list(v)
		}
		if len(ids) == 0 {
			m.note(f, listOpt, "empty in CAPE: no machines")
		}
	}
	var ms []*machine
	for _, id := range ids {
		listed[id] = true
		if mc := m.machine(f, kind, id); mc != nil {
			ms = append(ms, mc)
		}
	}
	for _, sec := range f.Sections {
		if !listed[sec.Name] {
			m.noteSection(f, sec, fmt.Sprintf("not used: [%s] is not listed in %s.machines, and CAPE ignores it too", sec.Name, kind))
		}
	}
	if o := main.Option("interface"); o != nil {
		m.note(f, o, "not used: sandfleet does not capture traffic")
	}
	dsn := ""
	var dsnOpt *Option
	switch kind {
	case "kvm":
		if dsnOpt = f.lookup(main, "dsn"); dsnOpt != nil {
			if v, ok := m.value(f, dsnOpt); ok {
				dsn = v
				if v == "" {
					m.note(f, dsnOpt, "empty in CAPE: virsh connects to its default hypervisor")
					dsnOpt = nil
				}
			} else {
				dsnOpt = nil
			}
		}
	case "physical":
		if o := main.Option("type"); o != nil {
			m.note(f, o, "not used: sandfleet treats every physical machine alike, hypervisor or not")
		}
		fog := f.Section("fog")
		if o := fog.Option("hostname"); o != nil {
			m.note(f, o, "not used: sandfleet does not call FOG itself; the physical pool's reset_command can")
		}
		for _, k := range []string{"apikey", "user_apikey"} {
			if o := fog.Option(k); o != nil {
				m.note(f, o, "not carried over: a FOG API key, a secret; a reset_command that calls FOG reads it from a file of its own")
			}
		}
	}
	m.pools(f, kind, listOpt, ms, dsn, dsnOpt)
}

// machine reads one machine's section as CAPE's machinery base does.
func (m *mapper) machine(f *File, kind, id string) *machine {
	sec := f.Section(id)
	if sec == nil {
		m.warn(fmt.Sprintf("%s.machines names %s, which has no [%s] section in %s: skipped, as CAPE skips it", kind, id, id, f.Name))
		return nil
	}
	for _, k := range []string{"label", "platform", "ip", "arch"} {
		if f.lookup(sec, k) == nil {
			m.warn(fmt.Sprintf("%s [%s] has no %s, which CAPE requires: the machine is skipped", f.Name, id, k))
			m.noteSection(f, sec, fmt.Sprintf("not imported: [%s] has no %s", id, k))
			return nil
		}
	}
	mc := &machine{sec: sec, used: map[string]*Option{}, remarks: map[string]string{}}
	get := func(key, field string) string {
		o := f.lookup(sec, key)
		if o == nil {
			return ""
		}
		v, ok := m.value(f, o)
		if !ok {
			return ""
		}
		if v == "" {
			m.emptyNote(f, o, "")
			return ""
		}
		if field != "" {
			mc.used[field] = o
		}
		return v
	}
	mc.m.Label = get("label", "label")
	mc.m.IP = get("ip", "ip")
	mc.m.Platform = strings.ToLower(get("platform", "platform"))
	mc.m.Arch = get("arch", "arch")
	mc.m.Tags = list(get("tags", "tags"))
	if o := f.lookup(sec, "reserved"); o != nil {
		if v, ok := m.value(f, o); ok {
			b, err := parseBool(v)
			switch {
			case v == "":
				m.emptyNote(f, o, "false")
			case err != nil:
				m.note(f, o, "not carried over: "+err.Error())
			default:
				mc.reserved = b
				mc.used["reserved"] = o
			}
		}
	}
	snap := f.lookup(sec, "snapshot")
	if kind == "kvm" {
		mc.snapshot = get("snapshot", "snapshot")
	} else if snap != nil {
		m.note(f, snap, "not used: a physical machine has no snapshot")
	}
	if o := f.lookup(sec, "interface"); o != nil {
		m.note(f, o, "not used: sandfleet does not capture traffic")
	}
	mc.rs = len(m.rs)
	m.rs = append(m.rs, rsClaim{file: f, ip: f.lookup(sec, "resultserver_ip"), port: f.lookup(sec, "resultserver_port")})
	return mc
}

// pools groups machines into pools: kvm.conf's into libvirt pools, which
// revert each domain to its own snapshot through libvirt's API,
// physical.conf's into static pools. A pool is reserved or not as a whole,
// so one pool per reserved-ness: kind, kind-reserved.
func (m *mapper) pools(f *File, kind string, listOpt *Option, ms []*machine, dsn string, dsnOpt *Option) {
	var groups [][]*machine
	for _, reserved := range []bool{false, true} {
		var g []*machine
		for _, mc := range ms {
			if mc.reserved == reserved {
				g = append(g, mc)
			}
		}
		if len(g) > 0 {
			groups = append(groups, g)
		}
	}
	for gi, g := range groups {
		reserved := g[0].reserved
		name := kind
		if reserved {
			name += "-reserved"
		}
		i := len(m.cfg.Pools)
		p := config.Pool{Name: m.poolName(name), Provider: "static", Platform: g[0].m.Platform, Reserved: reserved}
		at := func(k string) string { return fmt.Sprintf("pools[%d].%s", i, k) }
		mat := func(j int, k string) string { return fmt.Sprintf("pools[%d].machines[%d].%s", i, j, k) }
		item := fmt.Sprintf("pools[%d]", i)
		if gi == 0 {
			m.head(item, m.poolHead(kind))
		}
		if reserved {
			m.head(item, "reserved machines: only a task naming one of them gets it")
		}
		m.set(at("name"), "")
		m.set(at("provider"), "")
		m.set(at("platform"), "the first machine's; each machine says its own")
		// reserved = no is as much an option as yes: it is named on the
		// pool's reserved key either way.
		for _, mc := range g {
			if o := mc.used["reserved"]; o != nil {
				m.use(f, o, at("reserved"), "")
			}
		}
		switch kind {
		case "kvm":
			p.Provider, p.URI = "libvirt", dsn
			if dsnOpt != nil {
				m.use(f, dsnOpt, at("uri"), "")
			}
			m.snapshots(f, &p, g, at, mat)
		case "physical":
			m.set(at("reset_command"), "empty: a machine is reused as it is; CAPE re-imaged them through FOG, which a command here can ask for (SANDFLEET_MACHINE and SANDFLEET_IP are set)")
		}
		m.use(f, listOpt, at("machines"), "")
		for j, mc := range g {
			if kind == "kvm" {
				c := &m.rs[mc.rs]
				c.own, c.pool, c.machine = true, i, j
			}
			for _, field := range []string{"label", "ip", "platform", "arch", "tags"} {
				if o := mc.used[field]; o != nil {
					m.use(f, o, mat(j, field), "")
				}
			}
			p.Machines = append(p.Machines, mc.m)
		}
		m.cfg.Pools = append(m.cfg.Pools, p)
	}
}

// snapshots sets what a libvirt pool's machines are reverted to: the
// pool's snapshot when they all name the same one, else each machine's
// own. A machine naming none is reverted to its domain's current snapshot,
// as CAPE takes it.
func (m *mapper) snapshots(f *File, p *config.Pool, g []*machine, at func(string) string, mat func(int, string) string) {
	shared := g[0].snapshot
	for _, mc := range g {
		if mc.snapshot != shared {
			shared = ""
		}
	}
	if shared != "" {
		p.Snapshot, p.Image = shared, shared // a libvirt pool's image is its snapshot
		for _, mc := range g {
			m.use(f, mc.used["snapshot"], at("snapshot"), "")
		}
		return
	}
	current := false
	for j, mc := range g {
		if mc.snapshot == "" {
			current = true
			continue
		}
		mc.m.Snapshot = mc.snapshot
		m.use(f, mc.used["snapshot"], mat(j, "snapshot"), "")
	}
	if current {
		m.set(at("machines"), "a machine naming no snapshot is reverted to its domain's current one, as CAPE takes it")
	}
}

func (m *mapper) poolHead(kind string) string {
	if kind == "kvm" {
		return "kvm.conf machines, as libvirt pools: after each use sandfleet reverts\n" +
			"the domain (the machine's label) to its running snapshot through libvirt\n" +
			"(and at once, a domain that is shut off). `sandfleet libvirt snapshot LABEL`\n" +
			"takes a snapshot a domain lacks (`sandfleet doctor` says which)."
	}
	return "physical.conf machines, as static pools: sandfleet never creates or re-images them."
}

var poolNameUnsafe = regexp.MustCompile(`[^A-Za-z0-9-]+`)

// poolName makes a valid pool name not used yet.
func (m *mapper) poolName(want string) string {
	base := strings.Trim(poolNameUnsafe.ReplaceAllString(want, "-"), "-")
	if len(base) > 60 {
		base = base[:60]
	}
	name := base
	for n := 2; ; n++ {
		taken := false
		for _, p := range m.cfg.Pools {
			taken = taken || p.Name == name
		}
		if !taken {
			return name
		}
		name = fmt.Sprintf("%s-%d", base, n)
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
