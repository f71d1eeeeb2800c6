package capeconf

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sandfleet/sandfleet/internal/config"
)

// cuckooUnused are cuckoo.conf's options with no sandfleet key, and why.
// "section.*" covers a whole section.
var cuckooUnused = map[string]string{
	"cuckoo.ignore_signals":                 "not used: sandfleet's SIGTERM always drains running analyses (scheduler.drain_timeout), never kills them",
	"cuckoo.timezone":                       "not used: sandfleet keeps and shows times in UTC",
	"cuckoo.categories":                     "not used: sandfleet runs file and URL tasks; static and pcap tasks are CAPE's processing",
	"cuckoo.delete_original":                "not used: samples are kept under data_dir for CAPE's processing; deleting them is its business",
	"cuckoo.delete_archive":                 "not used: samples are kept under data_dir for CAPE's processing; deleting them is its business",
	"cuckoo.delete_bin_copy":                "not used: samples are kept under data_dir for CAPE's processing; deleting them is its business",
	"cuckoo.machinery_screenshots":          "not used: screenshots are the analyzer's; sandfleet takes none from the hypervisor",
	"cuckoo.scaling_semaphore":              "not used: sandfleet caps Azure machines with azure.total_machines_limit itself",
	"cuckoo.scaling_semaphore_update_timer": "not used: sandfleet caps Azure machines with azure.total_machines_limit itself",
	"cuckoo.task_timeout_scan_interval":     "not used: an overdue pending task is failed when the scheduler next looks at it",
	"cuckoo.memory_dump":                    "not used: sandfleet takes no memory dumps",
	"cuckoo.terminate_processes":            "not used: sandfleet ends an analysis through the guest agent and reimages or reverts the machine",
	"cuckoo.max_analysis_count":             "not used: sandfleet does not stop after a number of analyses (CAPE's guard against its own leaks)",
	"cuckoo.max_vmstartup_count":            "not used: sandfleet starts no machine per task; Azure operations are bounded by azure.max_concurrent_operations",
	"cuckoo.allow_static":                   "not used: sandfleet runs no machine-less (static) tasks",
	"cuckoo.freespace":                      "not used: sandfleet does not hold tasks back for free disk space",
	"cuckoo.freespace_processing":           "not used: processing is CAPE's, after sandfleet",
	"cuckoo.tmppath":                        "not used: uploads are kept under data_dir",
	"cuckoo.daydelta":                       "not used: a guest's clock is set only by a task's own clock option",
	"cuckoo.rooter":                         "not used: network routing is outside sandfleet",
	"cuckoo.periodic_log":                   "not used: the backlog and the machines are on /metrics and `sandfleet pools list`",
	"cuckoo.max_len":                        "not used: sandfleet does not shorten submitted file names",
	"cuckoo.sanitize_len":                   "not used: sandfleet does not shorten submitted file names",
	"cuckoo.sanitize_to_len":                "not used: sandfleet does not shorten submitted file names",
	"resultserver.force_port":               "not used: sandfleet binds exactly resultserver.listen and never picks another port",
	"resultserver.pool_size":                "not used: each connection has its own goroutine; there is no pool to size",
	"resultserver.store_csvs":               "not used: results are written in CAPE's layout only",
	"resultserver.do_upload_max_size":       "not used: sandfleet always enforces guest.upload_max_size",
	"resultserver.multiworker":              "not used: one result server, on resultserver.listen, serves every machine",
	"resultserver.base_port":                "not used: one result server, on resultserver.listen, serves every machine",
	"processing.*":                          "not used: processing is CAPE's, after sandfleet",
	"database.psql_ssl_mode":                "not carried over: sandfleet keeps its own database; put sslmode in its URL (database: postgres://…?sslmode=…)",
	"database.timeout":                      "not used: sandfleet bounds each database call itself",
	"database.log_statements":               "not used: sandfleet does not log SQL statements",
	"timeouts.stuck_seconds":                "not used: sandfleet ends an analysis as stuck after its timeout + timeouts.critical + timeouts.vm_state",
	"tmpfs.*":                               "not used: a processing option; processing is CAPE's",
	"cleaner.*":                             "not used: cleaning up old analyses is left to CAPE's utilities",
	"central_mode.*":                        "not used: CAPE's central control plane; several sandfleet nodes share one PostgreSQL instead",
	"multitenancy.*":                        "not used: tenancy belongs to CAPE's web interface",
}

// cuckoo maps cuckoo.conf: the scheduler, the timeouts and the result
// server's limits. The result server's address is resultServer's, as it
// must be weighed against what the machineries tell their machines.
func (m *mapper) cuckoo(f *File) {
	c := f.Section("cuckoo")
	s := &m.cfg.Scheduler
	m.integer(f, c, "max_machines_count", "scheduler.max_machines", &s.MaxMachines)
	m.boolean(f, c, "fail_unserviceable", "scheduler.fail_unserviceable", &s.FailUnserviceable)
	if o, ok := m.boolean(f, c, "reschedule", "scheduler.reschedule_running_on_restart", &s.RescheduleRunningOnRestart); ok && !s.RescheduleRunningOnRestart {
		m.use(f, o, "scheduler.reschedule_running_on_restart",
			"off as in CAPE: an analysis a restart interrupts fails; sandfleet's default (true) runs it again under the same id")
	}
	m.pendingTimeout(f, c)

	t := &m.cfg.Timeouts
	ts := f.Section("timeouts")
	m.seconds(f, ts, "default", "timeouts.default", &t.Default)
	m.seconds(f, ts, "critical", "timeouts.critical", &t.Critical)
	m.seconds(f, ts, "vm_state", "timeouts.vm_state", &t.VMState)

	var size int
	if o, ok := m.typed(f, f.Section("resultserver"), "upload_max_size", func(v string) (err error) { size, err = parseInt(v); return }, "100MiB"); ok {
		m.cfg.Guest.UploadMaxSize = config.Size(size)
		m.use(f, o, "guest.upload_max_size", "")
	}
	if db := f.Section("database"); db != nil {
		if o := f.lookup(db, "connection"); o != nil {
			m.note(f, o, m.databaseReason(f, db, o))
		}
	}
	for _, sec := range f.Sections {
		for _, o := range sec.Options {
			if why, ok := cuckooUnused[sec.Name+"."+o.Key]; ok {
				m.note(f, o, why)
			} else if why, ok := cuckooUnused[sec.Name+".*"]; ok {
				m.note(f, o, why)
			}
		}
	}
}

// pendingTimeout: CAPE deletes pending tasks older than task_pending_timeout,
// but only while task_timeout is on; sandfleet fails them with the reason.
func (m *mapper) pendingTimeout(f *File, c *Section) {
	var on bool
	onOpt, onOK := m.typed(f, c, "task_timeout", func(v string) (err error) { on, err = parseBool(v); return }, "off")
	var secs int
	secsOpt, secsOK := m.typed(f, c, "task_pending_timeout", func(v string) (err error) { secs, err = parseInt(v); return }, "0")
	const path = "scheduler.pending_timeout"
	switch {
	case !onOK:
		if secsOK {
			m.note(f, secsOpt, "not used: without task_timeout on, CAPE does not act on it either")
		}
	case !on:
		m.cfg.Scheduler.PendingTimeout = 0
		m.use(f, onOpt, path, "task_timeout is off: pending tasks wait for ever, as in CAPE")
		if secsOK {
			m.use(f, secsOpt, path, "")
		}
	default:
		m.cfg.Scheduler.PendingTimeout = time.Duration(secs) * time.Second
		m.use(f, onOpt, path, "")
		if secsOK {
			m.use(f, secsOpt, path, "CAPE deletes such a task; sandfleet fails it with the reason")
		}
	}
}

// databaseReason explains why CAPE's database is not sandfleet's, and
// suggests one beside it — without the password, which is never copied.
func (m *mapper) databaseReason(f *File, db *Section, o *Option) string {
	const why = "not carried over: sandfleet's tables (tasks, machines, …) would collide with CAPE's in one database"
	v, err := f.Value(o, m.opts.Env)
	if err != nil || strings.TrimSpace(v) == "" {
		return why + "; sandfleet's default is a SQLite database of its own under data_dir"
	}
	u, err := url.Parse(strings.TrimSpace(v))
	if err != nil {
		return why + "; give sandfleet a database of its own (database: postgres://USER@HOST:5432/sandfleet)"
	}
	scheme, _, _ := strings.Cut(u.Scheme, "+")
	switch scheme {
	case "postgres", "postgresql":
		s := "postgres://"
		if u.User != nil && u.User.Username() != "" {
			s += u.User.Username() + "@"
		}
		s += u.Host + "/sandfleet"
		if mode := f.lookup(db, "psql_ssl_mode"); mode != nil {
			if mv, err := f.Value(mode, m.opts.Env); err == nil && strings.TrimSpace(mv) != "" {
				s += "?sslmode=" + url.QueryEscape(strings.TrimSpace(mv))
			}
		}
		return why + "; give sandfleet a database of its own beside it, e.g. database: " + s +
			" (the password is not copied: PGPASSWORD or ~/.pgpass)"
	case "sqlite":
		return why + "; sandfleet's default is a SQLite database of its own under data_dir"
	default:
		return why + "; sandfleet runs on SQLite or PostgreSQL, not " + scheme
	}
}

// resultServer sets where the result server listens and what machines are
// told. CAPE binds cuckoo.conf's [resultserver] ip:port and tells each
// machine its machinery's resultserver_ip/port when set (for NAT), else
// that same address. sandfleet tells every machine one address: the one
// most machines are told; a machine told another is named.
func (m *mapper) resultServer(files map[string]*File) {
	cf := files["cuckoo"]
	listenIP, port := "", 0
	var ipOpt, portOpt *Option
	if cf != nil {
		rsSec := cf.Section("resultserver")
		if o := cf.lookup(rsSec, "ip"); o != nil {
			if v, ok := m.value(cf, o); ok && v == "" {
				m.emptyNote(cf, o, "")
			} else if ok {
				listenIP, ipOpt = v, o
			}
		}
		var p int
		if o, ok := m.typed(cf, rsSec, "port", func(v string) (err error) { p, err = parseInt(v); return }, "2042"); ok {
			port, portOpt = p, o
		}
	}
	if port == 0 { // no cuckoo.conf: the port machines are told, if any
		for _, c := range m.rs {
			if c.port == nil {
				continue
			}
			if v, ok := m.value(c.file, c.port); ok {
				if n, err := parseInt(v); err == nil && n > 0 {
					port = n
					break
				}
			}
		}
	}
	if port == 0 {
		port = 2042 // CAPE's
	}

	// Which machine-facing IP most machines are told; a machine without a
	// resultserver_ip of its own is told cuckoo.conf's.
	count := map[string]int{}
	var order []string
	vote := func(ip string) {
		if count[ip] == 0 {
			order = append(order, ip)
		}
		count[ip]++
	}
	listenUsable := validIP(listenIP) && !net.ParseIP(listenIP).IsUnspecified()
	ipOf := map[*Option]string{}
	for _, c := range m.rs {
		if c.ip == nil {
			if listenUsable {
				vote(listenIP)
			}
			continue
		}
		v, ok := m.value(c.file, c.ip)
		switch {
		case !ok:
		case v == "":
			m.note(c.file, c.ip, "empty in CAPE: the machines are told the result server's own address")
		case placeholder(v):
			m.note(c.file, c.ip, "not carried over: still CAPE's placeholder; resultserver.advertise_ip is the address machines reach the result server at")
		case !validIP(v):
			m.note(c.file, c.ip, fmt.Sprintf("not carried over: %q is not an IP address", v))
		default:
			ipOf[c.ip] = v
			vote(v)
		}
	}
	chosen := ""
	for _, ip := range order {
		if count[ip] > count[chosen] {
			chosen = ip
		}
	}
	advertise := chosen != "" && chosen != listenIP

	host := listenIP
	if listenUsable {
		// CAPE binds one address. sandfleet binds every address and tells
		// the machines the one they were told: the same to them, and the
		// configuration starts on a host that lacks the address too (the
		// result server takes a connection only from a machine with an
		// analysis under way).
		host = "0.0.0.0"
		if !advertise {
			advertise, chosen = true, listenIP
			m.use(cf, ipOpt, "resultserver.advertise_ip", "")
		} else {
			m.note(cf, ipOpt, fmt.Sprintf("not carried over: sandfleet listens on every address, and tells the machines %s, the address most of them are told", chosen))
		}
	}
	switch {
	case host == "0.0.0.0" && ipOpt != nil && m.done[ipOpt]:
	case host != "":
		m.use(cf, ipOpt, "resultserver.listen", "")
	case advertise:
		host = "0.0.0.0"
		m.set("resultserver.listen", "no [resultserver] ip in cuckoo.conf: listening on every address")
	default:
		host = "127.0.0.1"
		m.set("resultserver.listen", "")
		m.warn("the CAPE configuration names no result-server address the machines can reach: set resultserver.listen (and resultserver.advertise_ip)")
	}
	if !advertise && !listenUsable && host != "127.0.0.1" {
		m.warn(fmt.Sprintf("the result server listens on %s and no machine is told an address to reach it at: set resultserver.advertise_ip", host))
	}
	if portOpt != nil {
		m.use(cf, portOpt, "resultserver.listen", "")
	}
	rs := &m.cfg.ResultServer
	rs.Listen = net.JoinHostPort(host, strconv.Itoa(port))
	if advertise {
		rs.AdvertiseIP = chosen
	}
	owner := map[int]string{} // a libvirt machine's own port → its label
	for _, c := range m.rs {
		if v, ok := ipOf[c.ip]; ok && c.ip != nil {
			switch {
			case v != chosen:
				m.note(c.file, c.ip, fmt.Sprintf("not carried over: sandfleet tells every machine one result-server address, and most are told %s", chosen))
			case advertise:
				m.use(c.file, c.ip, "resultserver.advertise_ip", "")
			default:
				m.use(c.file, c.ip, "resultserver.listen", "")
			}
		}
		if c.port == nil || m.done[c.port] {
			continue
		}
		v, ok := m.value(c.file, c.port)
		if !ok {
			continue
		}
		n, err := parseInt(v)
		switch {
		case v == "":
			m.note(c.file, c.port, "empty in CAPE: the machines are told the result server's own port")
		case err != nil:
			m.note(c.file, c.port, "not carried over: "+err.Error())
		case n == port:
			m.use(c.file, c.port, "resultserver.listen", "")
		case c.own && n > 0 && n <= 65535 && owner[n] == "":
			pm := &m.cfg.Pools[c.pool].Machines[c.machine]
			pm.ResultServerPort = n
			owner[n] = pm.Label
			m.use(c.file, c.port, fmt.Sprintf("pools[%d].machines[%d].resultserver_port", c.pool, c.machine),
				"a port of its own: sandfleet listens on it too, and tells the machine it")
		case c.own && owner[n] != "":
			m.note(c.file, c.port, fmt.Sprintf("not carried over: port %d is already %s's own", n, owner[n]))
		default:
			m.note(c.file, c.port, fmt.Sprintf("not carried over: sandfleet tells every machine the port it listens on (%d); a port of their own (NAT) is not supported", port))
		}
	}
}
