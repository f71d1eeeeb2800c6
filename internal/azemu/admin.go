package azemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Errors of the admin API.
var (
	// ErrNotFound: no such scale set or VM.
	ErrNotFound = errors.New("not found")
	// ErrAmbiguous: the scale-set name exists in several resource groups;
	// name the one meant.
	ErrAmbiguous = errors.New("scale set name is ambiguous")
	// ErrInvalid: a bad argument.
	ErrInvalid = errors.New("invalid argument")
)

// VMInfo is one VM as the admin API reports it.
type VMInfo struct {
	Name              string `json:"name"`
	InstanceID        string `json:"instanceId"`
	IP                string `json:"ip"`
	AgentAddr         string `json:"agentAddr"`
	ProvisioningState string `json:"provisioningState"`
	PowerState        string `json:"powerState"`
	// Agent is what the guest agent is doing: up, down, hang or fail.
	Agent              string    `json:"agent"`
	LatestModelApplied bool      `json:"latestModelApplied"`
	TimeCreated        time.Time `json:"timeCreated"`
}

// ScaleSetInfo is one scale set as the admin API reports it.
type ScaleSetInfo struct {
	Name              string         `json:"name"`
	Subscription      string         `json:"subscription"`
	ResourceGroup     string         `json:"resourceGroup"`
	Location          string         `json:"location"`
	Capacity          int            `json:"capacity"`
	ProvisioningState string         `json:"provisioningState"`
	ETag              string         `json:"etag"`
	Tags              map[string]any `json:"tags,omitempty"`
	VMs               []VMInfo       `json:"vms"`
}

// Requests returns the ARM requests served, oldest first.
func (e *Emulator) Requests() []RequestRecord { return e.reqlog.all() }

// ClearRequests forgets the request log.
func (e *Emulator) ClearRequests() { e.reqlog.clear() }

// Faults returns the faults in force.
func (e *Emulator) Faults() Faults {
	e.mu.Lock()
	defer e.mu.Unlock()
	f := e.faults.clone()
	if f.LRODelayMS == nil {
		ms := e.opts.LRODelay.Milliseconds()
		f.LRODelayMS = &ms
	}
	return f
}

// SetFaults applies a faults document as POST /_emulator/faults does: keys
// present replace their fault (null removes it), {} or "clear": true clears
// them all (the LRO delay goes back to Options.LRODelay).
func (e *Emulator) SetFaults(doc []byte) (Faults, error) {
	e.mu.Lock()
	f, _, err := mergeFaults(e.faults, doc)
	if err == nil {
		e.faults = f
	}
	e.mu.Unlock()
	if err != nil {
		return Faults{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	e.log.Info("faults set", "faults", string(mustJSON(f)))
	return e.Faults(), nil
}

// ScaleSets lists every scale set with its VMs.
func (e *Emulator) ScaleSets() []ScaleSetInfo {
	var out []ScaleSetInfo
	e.mu.Lock()
	e.settleLocked(time.Now())
	keys := make([]string, 0, len(e.st.sets))
	for k := range e.st.sets {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		s := e.st.sets[k]
		info := ScaleSetInfo{
			Name: s.Name, Subscription: s.Sub, ResourceGroup: s.RG, Location: s.Location,
			Capacity: s.Capacity, ProvisioningState: s.State, ETag: s.etag(), Tags: s.Tags,
			VMs: []VMInfo{},
		}
		for _, v := range s.sortedVMs() {
			info.VMs = append(info.VMs, e.vmInfoLocked(s, v))
		}
		out = append(out, info)
	}
	e.mu.Unlock()
	e.syncAgents()
	for i := range out {
		for j := range out[i].VMs {
			out[i].VMs[j].Agent = e.agentRunning(out[i].VMs[j].IP)
		}
	}
	return out
}

func (e *Emulator) vmInfoLocked(s *scaleSet, v *vm) VMInfo {
	return VMInfo{
		Name:               s.vmName(v.ID),
		InstanceID:         strconv.Itoa(v.ID),
		IP:                 v.IP,
		AgentAddr:          v.IP + ":" + strconv.Itoa(e.opts.AgentPort),
		ProvisioningState:  v.State,
		PowerState:         v.Power,
		Agent:              v.agentWanted(),
		LatestModelApplied: v.ModelGen == s.ModelGen,
		TimeCreated:        v.Created,
	}
}

// findSetLocked finds a scale set by name across subscriptions and resource
// groups; resourceGroup (and subscription), when not empty, narrow it.
func (e *Emulator) findSetLocked(name, resourceGroup, subscription string) (*scaleSet, error) {
	var found []*scaleSet
	for _, s := range e.st.sets {
		if !strings.EqualFold(s.Name, name) ||
			(resourceGroup != "" && !strings.EqualFold(s.RG, resourceGroup)) ||
			(subscription != "" && !strings.EqualFold(s.Sub, subscription)) {
			continue
		}
		found = append(found, s)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("scale set %q: %w", name, ErrNotFound)
	case 1:
		return found[0], nil
	default:
		return nil, fmt.Errorf("scale set %q is in %d resource groups: %w", name, len(found), ErrAmbiguous)
	}
}

// adminChange runs a change to a scale set found by name, durably, and
// brings the agents in line before returning.
func (e *Emulator) adminChange(name, resourceGroup string, fn func(s *scaleSet, now time.Time) (VMInfo, error)) (VMInfo, error) {
	var info VMInfo
	var ferr error
	err := e.locked(func(now time.Time) {
		s, err := e.findSetLocked(name, resourceGroup, "")
		if err != nil {
			ferr = err
			return
		}
		if s.State == stDeleting {
			ferr = fmt.Errorf("scale set %q is being deleted: %w", name, ErrInvalid)
			return
		}
		info, ferr = fn(s, now)
	})
	if ferr != nil {
		return VMInfo{}, ferr
	}
	if err != nil {
		return VMInfo{}, err
	}
	info.Agent = e.agentRunning(info.IP)
	return info, nil
}

// adminVMChange is adminChange for one instance of the scale set.
func (e *Emulator) adminVMChange(name, resourceGroup, instanceID string, fn func(s *scaleSet, v *vm) VMInfo) (VMInfo, error) {
	return e.adminChange(name, resourceGroup, func(s *scaleSet, _ time.Time) (VMInfo, error) {
		v := s.lookupVM(instanceID)
		if v == nil {
			return VMInfo{}, fmt.Errorf("instance %s of %q: %w", instanceID, s.Name, ErrNotFound)
		}
		return fn(s, v), nil
	})
}

// AddVM adds an instance to a scale set behind its owner's back: capacity
// grows by one and the VM is provisioned at once (or Failed, if the
// fail_provisioning fault is armed).
func (e *Emulator) AddVM(setName, resourceGroup string) (VMInfo, error) {
	return e.adminChange(setName, resourceGroup, func(s *scaleSet, now time.Time) (VMInfo, error) {
		if s.Capacity >= maxCapacity {
			return VMInfo{}, fmt.Errorf("scale set %q is at %d instances: %w", s.Name, maxCapacity, ErrInvalid)
		}
		if e.st.ips.free() == 0 {
			return VMInfo{}, fmt.Errorf("address block %s is full: %w", e.st.ips.prefix, ErrInvalid)
		}
		v := e.newVMLocked(s, "", now)
		if v.FailProv {
			v.State, v.Power = stFailed, pwStopped
		} else {
			v.State, v.Power = stSucceeded, pwRunning
		}
		s.Capacity++
		s.ETag++
		e.log.Info("admin: VM added", "scale_set", s.Name, "instance_id", v.ID, "ip", v.IP)
		return e.vmInfoLocked(s, v), nil
	})
}

// RemoveVM makes an instance vanish at once (Spot eviction, manual delete):
// capacity shrinks by one.
func (e *Emulator) RemoveVM(setName, resourceGroup, instanceID string) (VMInfo, error) {
	return e.adminVMChange(setName, resourceGroup, instanceID, func(s *scaleSet, v *vm) VMInfo {
		info := e.vmInfoLocked(s, v)
		e.removeVMLocked(s, v)
		info.ProvisioningState, info.PowerState = stDeleting, pwDeallocated
		e.log.Info("admin: VM removed", "scale_set", s.Name, "instance_id", v.ID, "ip", v.IP)
		return info
	})
}

// EvictVM evicts a Spot VM as Azure does: with the eviction policy Delete
// it vanishes and the capacity shrinks by one; with Deallocate it stays,
// deallocated. A VM that is not Spot is ErrInvalid.
func (e *Emulator) EvictVM(setName, resourceGroup, instanceID string) (VMInfo, error) {
	return e.adminChange(setName, resourceGroup, func(s *scaleSet, _ time.Time) (VMInfo, error) {
		v := s.lookupVM(instanceID)
		if v == nil {
			return VMInfo{}, fmt.Errorf("instance %s of %q: %w", instanceID, s.Name, ErrNotFound)
		}
		info := e.vmInfoLocked(s, v)
		if !e.evictLocked(s, v) {
			return VMInfo{}, fmt.Errorf("instance %s of %q is not a Spot VM: %w", instanceID, s.Name, ErrInvalid)
		}
		if s.VMs[v.ID] == v {
			info = e.vmInfoLocked(s, v)
		} else {
			info.ProvisioningState, info.PowerState = stDeleting, pwDeallocated
		}
		e.log.Info("admin: VM evicted", "scale_set", s.Name, "instance_id", v.ID, "ip", v.IP)
		return info, nil
	})
}

// Readdress gives an instance another private IP behind its owner's back, as
// an operator setting its NIC to another address would: its guest agent
// answers at the new address (a fresh one, as after a reboot), and the old
// address is free. ARM itself never does this: reimage, restart and
// deallocation keep a VM's IP.
func (e *Emulator) Readdress(setName, resourceGroup, instanceID string) (VMInfo, error) {
	return e.adminChange(setName, resourceGroup, func(s *scaleSet, _ time.Time) (VMInfo, error) {
		v := s.lookupVM(instanceID)
		if v == nil {
			return VMInfo{}, fmt.Errorf("instance %s of %q: %w", instanceID, s.Name, ErrNotFound)
		}
		ip := e.st.ips.alloc()
		if ip == "" {
			return VMInfo{}, fmt.Errorf("address block %s is full: %w", e.st.ips.prefix, ErrInvalid)
		}
		e.st.ips.release(v.IP)
		e.log.Info("admin: VM readdressed", "scale_set", s.Name, "instance_id", v.ID, "from", v.IP, "to", ip)
		v.IP = ip
		e.gen++
		return e.vmInfoLocked(s, v), nil
	})
}

// SetAgentState sets what a VM's guest agent does: "up" (answers), "down"
// (its listener is closed), "hang" (accepts, never answers) or "fail"
// (answers, but every analyzer it starts from now on fails: status failed,
// exit code 1). A reimage or restart of the VM brings a fresh agent up.
// Going down loses the agent's state (a new one starts when it comes up);
// hang and fail keep it.
func (e *Emulator) SetAgentState(setName, resourceGroup, instanceID, state string) (VMInfo, error) {
	if state != agentUp && state != agentDown && state != agentHang && state != agentFail {
		return VMInfo{}, fmt.Errorf("agent state %q: want up, down, hang or fail: %w", state, ErrInvalid)
	}
	return e.adminVMChange(setName, resourceGroup, instanceID, func(s *scaleSet, v *vm) VMInfo {
		v.Agent = state
		if state == agentUp {
			v.Agent = ""
		}
		e.gen++
		e.log.Info("admin: agent state", "scale_set", s.Name, "instance_id", v.ID, "state", state)
		return e.vmInfoLocked(s, v)
	})
}

// --- HTTP ---

func (e *Emulator) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /_emulator/requests", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, e.Requests())
	})
	mux.HandleFunc("DELETE /_emulator/requests", func(w http.ResponseWriter, r *http.Request) {
		e.ClearRequests()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, e.Faults())
	})
	mux.HandleFunc("POST /_emulator/faults", func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			adminError(w, fmt.Errorf("%w: %v", ErrInvalid, err))
			return
		}
		f, err := e.SetFaults(b)
		if err != nil {
			adminError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, f)
	})
	mux.HandleFunc("GET /_emulator/scalesets", func(w http.ResponseWriter, r *http.Request) {
		sets := e.ScaleSets()
		if sets == nil {
			sets = []ScaleSetInfo{}
		}
		writeJSON(w, http.StatusOK, sets)
	})
	mux.HandleFunc("POST /_emulator/scalesets/{name}/vms", func(w http.ResponseWriter, r *http.Request) {
		info, err := e.AddVM(r.PathValue("name"), r.URL.Query().Get("resource_group"))
		adminReply(w, http.StatusOK, info, err)
	})
	mux.HandleFunc("DELETE /_emulator/scalesets/{name}/vms/{id}", func(w http.ResponseWriter, r *http.Request) {
		info, err := e.RemoveVM(r.PathValue("name"), r.URL.Query().Get("resource_group"), r.PathValue("id"))
		adminReply(w, http.StatusOK, info, err)
	})
	mux.HandleFunc("POST /_emulator/scalesets/{name}/vms/{id}/evict", func(w http.ResponseWriter, r *http.Request) {
		info, err := e.EvictVM(r.PathValue("name"), r.URL.Query().Get("resource_group"), r.PathValue("id"))
		adminReply(w, http.StatusOK, info, err)
	})
	mux.HandleFunc("POST /_emulator/scalesets/{name}/vms/{id}/agent", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			State string `json:"state"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			adminError(w, fmt.Errorf("%w: body: %v", ErrInvalid, err))
			return
		}
		info, err := e.SetAgentState(r.PathValue("name"), r.URL.Query().Get("resource_group"), r.PathValue("id"), in.State)
		adminReply(w, http.StatusOK, info, err)
	})
	mux.HandleFunc("/_emulator/", func(w http.ResponseWriter, r *http.Request) {
		adminError(w, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, ErrNotFound))
	})
}

func adminReply(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		adminError(w, err)
		return
	}
	writeJSON(w, status, v)
}

// adminError answers with ARM's error shape and a status from the error.
func adminError(w http.ResponseWriter, err error) {
	status, code := http.StatusInternalServerError, "InternalServerError"
	switch {
	case errors.Is(err, ErrNotFound):
		status, code = http.StatusNotFound, "ResourceNotFound"
	case errors.Is(err, ErrAmbiguous):
		status, code = http.StatusConflict, "Ambiguous"
	case errors.Is(err, ErrInvalid):
		status, code = http.StatusBadRequest, "InvalidParameter"
	}
	armError(w, status, code, err.Error())
}
