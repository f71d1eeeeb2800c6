package api

import (
	"bufio"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/sandfleet/sandfleet/internal/store"
)

// GET cuckoo/status/: CAPE's summary — version, hostname, machines (reserved
// ones left out), tasks by status, and the server's storage and memory in GB.
func (s *Server) cuckooStatus(w http.ResponseWriter, r *http.Request, b *backend) {
	ms, err := b.store.ListMachines(r.Context(), store.MachineFilter{})
	if err != nil {
		s.internal(w, r, err)
		return
	}
	total, available := 0, 0
	for _, m := range ms {
		if m.Reserved || m.State == store.Gone {
			continue
		}
		total++
		if m.State == store.Ready {
			available++
		}
	}
	counts, err := b.store.CountTasks(r.Context())
	if err != nil {
		s.internal(w, r, err)
		return
	}
	all := 0
	for _, n := range counts {
		all += n
	}
	host, _ := os.Hostname()
	reply(w, obj{
		{"version", Version},
		{"hostname", host},
		{"machines", obj{{"total", total}, {"available", available}}},
		{"tasks", obj{{"total", all}, {"pending", counts[store.TaskPending]}, {"running", counts[store.TaskRunning]},
			{"completed", counts[store.TaskCompleted]}, {"reported", counts[store.TaskReported]}}},
		{"server", obj{{"storage", storage(s.dataDir)}, {"ram", memory()}}},
	})
}

const gb = 1 << 30

// storage is the data directory's file system, in GB.
func storage(dir string) obj {
	if dir == "" {
		dir = "."
	}
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return obj{}
	}
	total := float64(st.Blocks) * float64(st.Bsize)
	free := float64(st.Bavail) * float64(st.Bsize)
	used := total - free
	pct := 0
	if total > 0 {
		pct = int(used / total * 100)
	}
	return obj{{"free", int(free / gb)}, {"total", int(total / gb)}, {"used", int(used / gb)},
		{"used_by", strconv.Itoa(pct) + "%"}}
}

// memory is the host's memory, in GB, from /proc/meminfo.
func memory() obj {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return obj{}
	}
	defer f.Close()
	kb := map[string]float64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 {
			if v, err := strconv.ParseFloat(fields[1], 64); err == nil {
				kb[strings.TrimSuffix(fields[0], ":")] = v
			}
		}
	}
	total, free := kb["MemTotal"]*1024, kb["MemAvailable"]*1024
	return obj{{"free", int(free / gb)}, {"total", int(total / gb)}, {"used", int((total - free) / gb)}}
}
