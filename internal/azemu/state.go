package azemu

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

const stateFile = "state.json"

// Provisioning states, as ARM spells them.
const (
	stCreating  = "Creating"
	stUpdating  = "Updating"
	stSucceeded = "Succeeded"
	stFailed    = "Failed"
	stDeleting  = "Deleting"
)

// Power states (the suffix of PowerState/<x>).
const (
	pwStarting     = "starting"
	pwRunning      = "running"
	pwStopping     = "stopping"
	pwStopped      = "stopped"
	pwDeallocating = "deallocating"
	pwDeallocated  = "deallocated"
)

// Agent states set through the admin endpoint.
const (
	agentUp   = "up"
	agentDown = "down"
	agentHang = "hang"
	agentFail = "fail" // answers, but every analyzer it starts fails
)

// scaleSet is one VM scale set. Its model is kept as the client sent it
// (minus what ARM computes), so that GET returns what PUT stored.
type scaleSet struct {
	Sub      string         `json:"subscription"`
	RG       string         `json:"resourceGroup"`
	Name     string         `json:"name"`
	Location string         `json:"location"`
	Tags     map[string]any `json:"tags,omitempty"`
	SKU      map[string]any `json:"sku,omitempty"` // without capacity
	Capacity int            `json:"capacity"`
	// Model holds every other top-level key of the resource ("properties",
	// "zones", "identity", "plan", …).
	Model    map[string]any `json:"model,omitempty"`
	ETag     int            `json:"etag"`
	ModelGen int            `json:"modelGen"`
	State    string         `json:"provisioningState"`
	// StateOp is the operation whose end sets State back to Succeeded.
	StateOp  string      `json:"stateOp,omitempty"`
	NextID   int         `json:"nextInstanceId"`
	UniqueID string      `json:"uniqueId"`
	Created  time.Time   `json:"timeCreated"`
	VMs      map[int]*vm `json:"vms"`
}

// vm is one scale-set instance.
type vm struct {
	ID    int    `json:"id"`
	VMID  string `json:"vmId"`
	IP    string `json:"ip"`
	State string `json:"provisioningState"`
	Power string `json:"power"`
	// Agent is the admin override of the guest agent: "" (up), down, hang
	// or fail.
	Agent string `json:"agent,omitempty"`
	// Boot counts the VM's (re)starts: each one runs a fresh agent.
	Boot int `json:"boot,omitempty"`
	// Op is the operation that will move this VM on when it ends.
	Op string `json:"op,omitempty"`
	// PowerGoal is the power state Op leaves the VM in.
	PowerGoal string `json:"powerGoal,omitempty"`
	// FailProv makes the VM's provisioning end Failed.
	FailProv bool           `json:"failProvisioning,omitempty"`
	ModelGen int            `json:"modelGen"`
	Image    map[string]any `json:"image,omitempty"`
	Size     string         `json:"size,omitempty"`
	Tags     map[string]any `json:"tags,omitempty"`
	Created  time.Time      `json:"timeCreated"`
}

// operation is a long-running operation. It ends at End, whatever happens
// meanwhile (including a restart of the emulator).
type operation struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Sub      string    `json:"subscription"`
	SetKey   string    `json:"scaleSet"`
	Location string    `json:"location"`
	Start    time.Time `json:"start"`
	End      time.Time `json:"end"`
	Done     bool      `json:"done,omitempty"`
	FailCode string    `json:"failCode,omitempty"`
	FailMsg  string    `json:"failMessage,omitempty"`
}

// Operation kinds.
const (
	opPutSet          = "putScaleSet"
	opPatchSet        = "patchScaleSet"
	opDeleteSet       = "deleteScaleSet"
	opDeleteInstances = "deleteInstances"
	opReimage         = "reimage"
	opPower           = "power"
	opDeleteVM        = "deleteVM"
)

func (o *operation) status(now time.Time) string {
	switch {
	case !o.Done && now.Before(o.End):
		return "InProgress"
	case o.FailCode != "":
		return "Failed"
	default:
		return "Succeeded"
	}
}

// state is everything the emulator knows; guarded by Emulator.mu.
type state struct {
	sets    map[string]*scaleSet // by setKey
	ops     map[string]*operation
	pending []*operation // not done, by End
	ips     *ipPool
	// listen is the address the emulator last listened on, so that a
	// restart asked for "any port" comes back on the same one and the
	// polling URLs clients hold (resume tokens) keep working.
	listen string
}

// persisted is the on-disk form of state.
type persisted struct {
	Version    int          `json:"version"`
	IPBlock    string       `json:"ipBlock"`
	IPCursor   uint32       `json:"ipCursor"`
	Listen     string       `json:"listen,omitempty"`
	ScaleSets  []*scaleSet  `json:"scaleSets"`
	Operations []*operation `json:"operations"`
}

func setKey(sub, rg, name string) string {
	return strings.ToLower(sub) + "/" + strings.ToLower(rg) + "/" + strings.ToLower(name)
}

func (s *scaleSet) key() string { return setKey(s.Sub, s.RG, s.Name) }

func (s *scaleSet) etag() string { return strconv.Quote(strconv.Itoa(s.ETag)) }

// sortedVMs returns the VMs by instance id.
func (s *scaleSet) sortedVMs() []*vm {
	out := make([]*vm, 0, len(s.VMs))
	for _, v := range s.VMs {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// activeVMs are the VMs not being deleted, by instance id.
func (s *scaleSet) activeVMs() []*vm {
	all := s.sortedVMs()
	out := all[:0]
	for _, v := range all {
		if v.State != stDeleting {
			out = append(out, v)
		}
	}
	return out
}

func (s *scaleSet) vmName(id int) string { return s.Name + "_" + strconv.Itoa(id) }

// agentWanted is what the VM's guest agent should be doing now.
func (v *vm) agentWanted() string {
	if v.State != stSucceeded || v.Power != pwRunning {
		return agentDown
	}
	if v.Agent == agentDown || v.Agent == agentHang || v.Agent == agentFail {
		return v.Agent
	}
	return agentUp
}

// newID returns a random UUID (version 4) string.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// loadState reads DIR/state.json; a missing file is an empty state.
func loadState(dir string) (*persisted, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p persisted
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%s: %w", stateFile, err)
	}
	return &p, nil
}

// newState builds the in-memory state from what was on disk (nil for none).
// block, when valid, overrides the persisted address block.
func newState(p *persisted, block netip.Prefix) (*state, error) {
	st := &state{sets: map[string]*scaleSet{}, ops: map[string]*operation{}}
	var cursor uint32
	if p != nil {
		if !block.IsValid() && p.IPBlock != "" {
			b, err := parseIPBlock(p.IPBlock)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", stateFile, err)
			}
			block = b
			cursor = p.IPCursor
		} else if block.IsValid() && p.IPBlock == block.String() {
			cursor = p.IPCursor
		}
	}
	if !block.IsValid() {
		block = randomIPBlock()
	}
	st.ips = newIPPool(block, cursor)
	if p == nil {
		return st, nil
	}
	st.listen = p.Listen
	for _, s := range p.ScaleSets {
		if s.VMs == nil {
			s.VMs = map[int]*vm{}
		}
		for _, v := range s.VMs {
			st.ips.markUsed(v.IP)
		}
		st.sets[s.key()] = s
	}
	for _, o := range p.Operations {
		st.ops[o.ID] = o
		if !o.Done {
			st.addPending(o)
		}
	}
	return st, nil
}

func (st *state) addPending(o *operation) {
	i := sort.Search(len(st.pending), func(i int) bool { return st.pending[i].End.After(o.End) })
	st.pending = append(st.pending, nil)
	copy(st.pending[i+1:], st.pending[i:])
	st.pending[i] = o
}

// snapshot renders the state for disk.
func (st *state) snapshot() ([]byte, error) {
	p := persisted{
		Version:  1,
		IPBlock:  st.ips.prefix.String(),
		IPCursor: st.ips.cursor,
		Listen:   st.listen,
	}
	keys := make([]string, 0, len(st.sets))
	for k := range st.sets {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p.ScaleSets = append(p.ScaleSets, st.sets[k])
	}
	for _, o := range st.ops {
		p.Operations = append(p.Operations, o)
	}
	sort.Slice(p.Operations, func(i, j int) bool { return p.Operations[i].Start.Before(p.Operations[j].Start) })
	return json.Marshal(p)
}

// Limits on remembered operations: ARM also forgets finished operations.
const (
	opRetention = 6 * time.Hour
	opMaxKept   = 2000
)

// pruneOps forgets finished operations that ended long ago.
func (st *state) pruneOps(now time.Time) {
	if len(st.ops) <= opMaxKept/2 {
		// Cheap common case: only scan when many are kept.
		var old bool
		for _, o := range st.ops {
			if o.Done && now.Sub(o.End) > opRetention {
				old = true
				break
			}
		}
		if !old {
			return
		}
	}
	var done []*operation
	for id, o := range st.ops {
		if !o.Done {
			continue
		}
		if now.Sub(o.End) > opRetention {
			delete(st.ops, id)
			continue
		}
		done = append(done, o)
	}
	if extra := len(st.ops) - opMaxKept; extra > 0 {
		sort.Slice(done, func(i, j int) bool { return done[i].End.Before(done[j].End) })
		for _, o := range done[:min(extra, len(done))] {
			delete(st.ops, o.ID)
		}
	}
}
