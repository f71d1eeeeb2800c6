package azemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits ARM enforces on scale sets.
const maxCapacity = 1000

// reply is a response computed under e.mu and written after it is released
// (and after the change it acknowledges is on disk).
type reply struct {
	status     int
	body       []byte
	op         *operation
	retryAfter int // with op: the lro_retry_after_s fault, -1 when unset
	etag       string
	errCode    string
	errMsg     string
}

func errReply(status int, code, msg string) reply {
	return reply{status: status, errCode: code, errMsg: msg}
}

// locked runs fn under e.mu after ending due operations, then makes the
// changes durable and the agents current, so that what the reply
// acknowledges has happened.
func (e *Emulator) locked(fn func(now time.Time)) error {
	now := time.Now()
	e.mu.Lock()
	e.settleLocked(now)
	fn(now)
	gen := e.gen
	if gen != e.saved {
		e.wake()
	}
	e.mu.Unlock()
	return e.publish(gen)
}

// answer runs fn as locked does and sends the reply it returns.
func (e *Emulator) answer(w http.ResponseWriter, r *http.Request, fn func(now time.Time) reply) {
	var rep reply
	err := e.locked(func(now time.Time) {
		rep = fn(now)
		rep.retryAfter = e.faults.retryAfter()
	})
	e.send(w, r, rep, err)
}

// send writes a reply.
func (e *Emulator) send(w http.ResponseWriter, r *http.Request, rep reply, stateErr error) {
	if stateErr != nil {
		armError(w, http.StatusInternalServerError, "InternalServerError", "The emulator could not save its state: "+stateErr.Error())
		return
	}
	if rep.errCode != "" {
		armError(w, rep.status, rep.errCode, rep.errMsg)
		return
	}
	if rep.op != nil {
		setOpHeaders(w, r, rep.op, time.Now())
		paceRetryAfter(w.Header(), rep.retryAfter)
	}
	if rep.etag != "" {
		w.Header().Set("ETag", rep.etag)
	}
	if rep.body == nil {
		w.WriteHeader(rep.status)
		return
	}
	writeRaw(w, rep.status, rep.body)
}

func okReply(v any) reply {
	return reply{status: http.StatusOK, body: mustJSON(v)}
}

// accepted answers a POST or DELETE that began operation o.
func accepted(o *operation) reply {
	return reply{status: http.StatusAccepted, op: o}
}

func noContent() reply {
	return reply{status: http.StatusNoContent}
}

// setReply shows scale set s in provisioning state state, with its ETag
// and, when o is not nil, the polling headers of o.
func (e *Emulator) setReply(status int, s *scaleSet, state string, o *operation) reply {
	return reply{status: status, body: mustJSON(e.renderSet(s, state)), op: o, etag: s.etag()}
}

func notFoundSet(rg, name string) reply {
	return errReply(http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
		"The Resource 'Microsoft.Compute/virtualMachineScaleSets/%s' under resource group '%s' was not found.", name, rg))
}

func parentNotFound(name string) reply {
	return errReply(http.StatusNotFound, "ParentResourceNotFound", fmt.Sprintf(
		"Can not perform requested operation on nested resource. Parent resource '%s' not found.", name))
}

func notFoundVM(rg, name, id string) reply {
	return errReply(http.StatusNotFound, "ResourceNotFound", fmt.Sprintf(
		"The Resource 'Microsoft.Compute/virtualMachineScaleSets/%s/virtualMachines/%s' under resource group '%s' was not found.", name, id, rg))
}

func conflictDeleting(name string) reply {
	return errReply(http.StatusConflict, "OperationNotAllowed", fmt.Sprintf(
		"The operation is not allowed because scale set '%s' is being deleted.", name))
}

func undecodable() reply {
	return errReply(http.StatusBadRequest, "InvalidRequestContent", "The request content was invalid and could not be deserialized.")
}

// setLocked finds the scale set a request names; miss is ARM's answer when
// there is none.
func (e *Emulator) setLocked(sub, rg, name string) (s *scaleSet, miss reply) {
	s = e.st.sets[setKey(sub, rg, name)]
	if s == nil {
		return nil, notFoundSet(rg, name)
	}
	return s, reply{}
}

// parentLocked finds the scale set of the VMs or NICs a request names; ARM
// calls a missing one ParentResourceNotFound.
func (e *Emulator) parentLocked(sub, rg, name string) (s *scaleSet, miss reply) {
	s = e.st.sets[setKey(sub, rg, name)]
	if s == nil {
		return nil, parentNotFound(name)
	}
	return s, reply{}
}

// vmLocked finds the VM a request names. s is nil when its scale set is
// missing, v when either is; miss is ARM's answer then.
func (e *Emulator) vmLocked(sub, rg, name, id string) (s *scaleSet, v *vm, miss reply) {
	s, miss = e.parentLocked(sub, rg, name)
	if s == nil {
		return nil, nil, miss
	}
	if v = s.lookupVM(id); v == nil {
		return s, nil, notFoundVM(rg, name, id)
	}
	return s, v, reply{}
}

// preconditionFailed checks If-Match and If-None-Match against s (nil when
// absent).
func preconditionFailed(r *http.Request, s *scaleSet) (reply, bool) {
	cur := ""
	if s != nil {
		cur = s.etag()
	}
	if im := r.Header.Get("If-Match"); im != "" {
		if s == nil || !etagMatches(im, cur) {
			return errReply(http.StatusPreconditionFailed, "PreconditionFailed",
				"The specified precondition 'If-Match: "+im+"' failed; the current ETag is '"+cur+"'."), true
		}
	}
	if inm := r.Header.Get("If-None-Match"); inm != "" && s != nil && etagMatches(inm, cur) {
		return errReply(http.StatusPreconditionFailed, "PreconditionFailed",
			"The specified precondition 'If-None-Match: "+inm+"' failed; the resource exists."), true
	}
	return reply{}, false
}

// etagMatches compares an If-Match / If-None-Match list with an ETag,
// ignoring weakness and quotes.
func etagMatches(header, etag string) bool {
	norm := func(s string) string {
		s = strings.TrimSpace(s)
		s = strings.TrimPrefix(s, "W/")
		return strings.Trim(s, `"`)
	}
	for _, h := range strings.Split(header, ",") {
		if strings.TrimSpace(h) == "*" || norm(h) == norm(etag) {
			return true
		}
	}
	return false
}

// parsedSet is the client's part of a scale-set body.
type parsedSet struct {
	location string
	tags     map[string]any
	hasTags  bool
	sku      map[string]any // without capacity
	hasSKU   bool
	capacity int
	hasCap   bool
	model    map[string]any
}

// Keys of a resource body that ARM computes, or that the emulator keeps
// outside the model.
var computedKeys = map[string]bool{"id": true, "name": true, "type": true, "etag": true,
	"location": true, "tags": true, "sku": true}

func parseSetBody(body []byte) (parsedSet, *reply) {
	var in map[string]any
	if err := json.Unmarshal(body, &in); err != nil || in == nil {
		r := undecodable()
		return parsedSet{}, &r
	}
	p := parsedSet{model: map[string]any{}}
	p.location, _ = in["location"].(string)
	if t, ok := in["tags"]; ok {
		p.hasTags = true
		p.tags, _ = t.(map[string]any)
	}
	if sk, ok := in["sku"].(map[string]any); ok {
		p.hasSKU = true
		p.sku = map[string]any{}
		for k, v := range sk {
			if k != "capacity" {
				p.sku[k] = v
			}
		}
		if c, ok := sk["capacity"]; ok && c != nil {
			f, ok := c.(float64)
			if !ok || f != float64(int(f)) || f < 0 || f > maxCapacity {
				r := errReply(http.StatusBadRequest, "InvalidParameter", fmt.Sprintf(
					"The value %v of parameter 'sku.capacity' is not valid: it must be an integer from 0 to %d.", c, maxCapacity))
				return parsedSet{}, &r
			}
			p.capacity, p.hasCap = int(f), true
		}
	}
	if props, ok := in["properties"]; ok && props != nil {
		if _, ok := props.(map[string]any); !ok {
			r := errReply(http.StatusBadRequest, "InvalidRequestContent", "'properties' must be an object.")
			return parsedSet{}, &r
		}
	}
	for k, v := range in {
		if !computedKeys[k] {
			p.model[k] = v
		}
	}
	return p, nil
}

// mergePatch applies an ARM PATCH (JSON merge patch: objects merge, null
// removes, anything else replaces) without modifying dst.
func mergePatch(dst, patch map[string]any) map[string]any {
	out := make(map[string]any, len(dst)+len(patch))
	for k, v := range dst {
		out[k] = v
	}
	for k, pv := range patch {
		if pv == nil {
			delete(out, k)
			continue
		}
		if pm, ok := pv.(map[string]any); ok {
			if dm, ok := out[k].(map[string]any); ok {
				out[k] = mergePatch(dm, pm)
				continue
			}
		}
		out[k] = pv
	}
	return out
}

// dig walks nested JSON objects.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func imageReference(model map[string]any) map[string]any {
	m, _ := dig(model, "properties", "virtualMachineProfile", "storageProfile", "imageReference").(map[string]any)
	return m
}

func validSetName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// --- scale sets ---

func (e *Emulator) handleListSets(w http.ResponseWriter, r *http.Request, sub, rg string) {
	e.answer(w, r, func(time.Time) reply {
		prefix := setKey(sub, rg, "")
		var keys []string
		for k := range e.st.sets {
			if strings.HasPrefix(k, prefix) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		return reply{status: http.StatusOK, body: e.listPage(r, keys, func(i int) any {
			s := e.st.sets[keys[i]]
			return e.renderSet(s, s.State)
		})}
	})
}

func (e *Emulator) handleGetSet(w http.ResponseWriter, r *http.Request, sub, rg, name string) {
	e.answer(w, r, func(time.Time) reply {
		s, miss := e.setLocked(sub, rg, name)
		if s == nil {
			return miss
		}
		return e.setReply(http.StatusOK, s, s.State, nil)
	})
}

func (e *Emulator) handlePutSet(w http.ResponseWriter, r *http.Request, sub, rg, name string, body []byte) {
	if !validSetName(name) {
		armError(w, http.StatusBadRequest, "InvalidParameter", "The scale set name '"+name+"' is not valid.")
		return
	}
	in, bad := parseSetBody(body)
	if bad != nil {
		e.send(w, r, *bad, nil)
		return
	}
	if in.location == "" {
		armError(w, http.StatusBadRequest, "LocationRequired", "The location property is required for this definition.")
		return
	}
	if rep, missing := e.missingImage(in.model, in.location); missing {
		e.send(w, r, rep, nil)
		return
	}
	e.answer(w, r, func(now time.Time) reply {
		s, _ := e.setLocked(sub, rg, name)
		if rep, refused := e.refuseChangeLocked(r, opPutSet, s, name, now); refused {
			return rep
		}
		created := s == nil
		capacity := in.capacity
		if !in.hasCap && !created {
			capacity = s.Capacity
		}
		size, _ := in.sku["name"].(string)
		if rep, refused := e.growthRefusedLocked(s, sub, name, in.location, size, in.model, capacity); refused {
			return rep
		}
		state, status := stUpdating, http.StatusOK
		if created {
			s = &scaleSet{Sub: sub, RG: rg, Name: name, UniqueID: newID(), Created: now, VMs: map[int]*vm{}}
			e.st.sets[s.key()] = s
			state, status = stCreating, http.StatusCreated
		}
		if created || !reflect.DeepEqual(s.Model, in.model) {
			s.ModelGen++
		}
		s.Location, s.Tags, s.SKU, s.Model = in.location, in.tags, in.sku, in.model
		o := e.changeSetLocked(opPutSet, s, state, capacity, now)
		return e.setReply(status, s, s.State, o)
	})
}

func (e *Emulator) handlePatchSet(w http.ResponseWriter, r *http.Request, sub, rg, name string, body []byte) {
	in, bad := parseSetBody(body)
	if bad != nil {
		e.send(w, r, *bad, nil)
		return
	}
	e.answer(w, r, func(now time.Time) reply {
		s, miss := e.setLocked(sub, rg, name)
		if s == nil {
			return miss
		}
		// Only an image the patch names is checked: scaling a set whose
		// image has gone is another matter.
		if rep, missing := e.missingImage(in.model, s.Location); missing {
			return rep
		}
		if rep, refused := e.refuseChangeLocked(r, opPatchSet, s, name, now); refused {
			return rep
		}
		capacity := s.Capacity
		if in.hasCap {
			capacity = in.capacity
		}
		sku := s.SKU
		if in.hasSKU {
			sku = mergePatch(s.SKU, in.sku)
		}
		model := mergePatch(s.Model, in.model)
		size, _ := sku["name"].(string)
		if rep, refused := e.growthRefusedLocked(s, sub, s.Name, s.Location, size, model, capacity); refused {
			return rep
		}
		s.SKU = sku
		if in.hasTags {
			s.Tags = in.tags
		}
		if !reflect.DeepEqual(model, s.Model) {
			s.Model = model
			s.ModelGen++
		}
		o := e.changeSetLocked(opPatchSet, s, stUpdating, capacity, now)
		return e.setReply(http.StatusOK, s, s.State, o)
	})
}

// refuseChangeLocked checks a PUT or PATCH of scale set s (nil when there is
// none yet) before it changes anything: its preconditions, a delete under
// way, and an armed OperationPreempted fault, which is answered as if the
// change had begun.
func (e *Emulator) refuseChangeLocked(r *http.Request, kind string, s *scaleSet, name string, now time.Time) (reply, bool) {
	if pf, failed := preconditionFailed(r, s); failed {
		return pf, true
	}
	if s == nil {
		return reply{}, false
	}
	if s.State == stDeleting {
		return conflictDeleting(name), true
	}
	if o := e.preemptLocked(kind, s, now); o != nil {
		return e.setReply(http.StatusOK, s, stUpdating, o), true
	}
	return reply{}, false
}

// addressesShortLocked refuses to grow s (nil for a new set) to capacity
// VMs when the address block has too few free addresses.
func (e *Emulator) addressesShortLocked(s *scaleSet, capacity int) (reply, bool) {
	need := capacity
	if s != nil {
		need -= len(s.activeVMs())
	}
	if need <= 0 || uint32(need) <= e.st.ips.free() {
		return reply{}, false
	}
	return errReply(http.StatusBadRequest, "SubnetIsFull", fmt.Sprintf(
		"The emulator's address block %s has %d free addresses; %d are needed.", e.st.ips.prefix, e.st.ips.free(), need)), true
}

// changeSetLocked begins operation kind for a change of s's model or
// capacity: s gets a new ETag and stays in provisioning state state until
// the operation ends, and VMs are created or deleted to reach capacity.
func (e *Emulator) changeSetLocked(kind string, s *scaleSet, state string, capacity int, now time.Time) *operation {
	s.ETag++
	o := e.beginOpLocked(kind, s, now)
	s.State, s.StateOp = state, o.ID
	e.scaleLocked(s, capacity, o, now)
	return o
}

func (e *Emulator) handleDeleteSet(w http.ResponseWriter, r *http.Request, sub, rg, name string) {
	e.answer(w, r, func(now time.Time) reply {
		s, _ := e.setLocked(sub, rg, name)
		if s == nil {
			return noContent()
		}
		if o := e.preemptLocked(opDeleteSet, s, now); o != nil {
			return accepted(o)
		}
		o := e.beginOpLocked(opDeleteSet, s, now)
		s.State, s.StateOp = stDeleting, o.ID
		for _, v := range s.VMs {
			v.markDeleting(o.ID)
		}
		return accepted(o)
	})
}

// scaleLocked sets s's capacity: new VMs (new, increasing instance ids) are
// created, or the newest are deleted, under operation o.
func (e *Emulator) scaleLocked(s *scaleSet, capacity int, o *operation, now time.Time) {
	s.Capacity = capacity
	active := s.activeVMs()
	for i := len(active); i < capacity; i++ {
		v := e.newVMLocked(s, o.ID, now)
		if v.FailProv && o.FailCode == "" {
			o.FailCode = codeOSProvisioningTimeout
			o.FailMsg = fmt.Sprintf("OS Provisioning for VM '%s' did not finish in the allotted time. The VM may still finish provisioning successfully.", s.vmName(v.ID))
		}
	}
	if len(active) > capacity {
		for _, v := range active[capacity:] {
			v.markDeleting(o.ID)
		}
	}
}

// markDeleting hands v to operation opID, whose end deletes it.
func (v *vm) markDeleting(opID string) {
	v.State, v.Power, v.Op, v.PowerGoal = stDeleting, pwStopping, opID, ""
}

// newVMLocked adds a VM, Creating, owned by operation opID ("" for one that
// is provisioned at once).
func (e *Emulator) newVMLocked(s *scaleSet, opID string, now time.Time) *vm {
	id := s.NextID
	s.NextID++
	v := &vm{
		ID: id, VMID: newID(), IP: e.st.ips.alloc(),
		State: stCreating, Power: pwStarting, Op: opID,
		ModelGen: s.ModelGen, Image: imageReference(s.Model), Size: skuName(s),
		Tags: s.Tags, Created: now,
	}
	if e.faults.FailProvisioning > 0 {
		e.faults.FailProvisioning--
		v.FailProv = true
	}
	s.VMs[id] = v
	e.gen++
	return v
}

func skuName(s *scaleSet) string {
	n, _ := s.SKU["name"].(string)
	return n
}

// --- actions on a scale set's instances ---

// instanceIDs is the body of delete/reimage/restart… on a scale set.
type instanceIDs struct {
	InstanceIDs []string `json:"instanceIds"`
}

func (e *Emulator) handleSetAction(w http.ResponseWriter, r *http.Request, sub, rg, name, action string, body []byte) {
	var in instanceIDs
	if len(strings.TrimSpace(string(body))) > 0 {
		if err := json.Unmarshal(body, &in); err != nil {
			e.send(w, r, undecodable(), nil)
			return
		}
	}
	if action == "delete" && len(in.InstanceIDs) == 0 {
		armError(w, http.StatusBadRequest, "InvalidParameter", "Required parameter 'instanceIds' is missing (null).")
		return
	}
	e.answer(w, r, func(now time.Time) reply {
		s, miss := e.setLocked(sub, rg, name)
		if s == nil {
			return miss
		}
		return e.actLocked(s, action, in.InstanceIDs, now)
	})
}

func (e *Emulator) handleVMAction(w http.ResponseWriter, r *http.Request, sub, rg, name, id, action string) {
	e.answer(w, r, func(now time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, id)
		if v == nil {
			return miss
		}
		if v.State == stDeleting {
			return notFoundVM(rg, name, id)
		}
		return e.actLocked(s, action, []string{id}, now)
	})
}

func (e *Emulator) handleDeleteVM(w http.ResponseWriter, r *http.Request, sub, rg, name, id string) {
	e.answer(w, r, func(now time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, id)
		switch {
		case s == nil:
			return miss
		case v == nil:
			return noContent()
		}
		return e.actLocked(s, "delete", []string{id}, now)
	})
}

// handleSimulateEviction evicts a Spot VM at once (Azure does within 30
// minutes).
func (e *Emulator) handleSimulateEviction(w http.ResponseWriter, r *http.Request, sub, rg, name, id string) {
	e.answer(w, r, func(time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, id)
		if v == nil {
			return miss
		}
		if !e.evictLocked(s, v) {
			return errReply(http.StatusConflict, "OperationNotAllowed", fmt.Sprintf(
				"Virtual machine '%s' is not a Spot virtual machine: only Spot virtual machines can be evicted.", s.vmName(v.ID)))
		}
		return noContent()
	})
}

// evictLocked evicts a Spot VM as Azure does when it wants the capacity
// back: with the Delete eviction policy the VM is gone, and the capacity
// with it (Spot restore is not modelled); with Deallocate, the default, it
// stays, deallocated, until started. false: v is not a Spot VM.
func (e *Emulator) evictLocked(s *scaleSet, v *vm) bool {
	view := s.view()
	if !view.spot {
		return false
	}
	if strings.EqualFold(view.evictionPolicy, "Delete") {
		e.removeVMLocked(s, v)
		return true
	}
	if v.State != stDeleting { // one being deleted goes anyway
		v.State, v.Power, v.Op, v.PowerGoal = stSucceeded, pwDeallocated, "", ""
		e.gen++
	}
	return true
}

func (s *scaleSet) lookupVM(id string) *vm {
	n, err := strconv.Atoi(id)
	if err != nil || strconv.Itoa(n) != id {
		return nil
	}
	return s.VMs[n]
}

// removeVMLocked makes a VM vanish at once (eviction, loss), shrinking the
// capacity.
func (e *Emulator) removeVMLocked(s *scaleSet, v *vm) {
	if v.State != stDeleting && s.Capacity > 0 {
		s.Capacity--
	}
	e.st.ips.release(v.IP)
	delete(s.VMs, v.ID)
	s.ETag++
	e.gen++
}

// actLocked begins action on the listed instances of s (all when ids is
// empty and the action is not delete).
func (e *Emulator) actLocked(s *scaleSet, action string, ids []string, now time.Time) reply {
	if s.State == stDeleting {
		return conflictDeleting(s.Name)
	}
	var targets []*vm
	if len(ids) == 0 {
		targets = s.activeVMs()
	} else {
		seen := map[int]bool{}
		for _, id := range ids {
			v := s.lookupVM(id)
			if v == nil || v.State == stDeleting {
				return errReply(http.StatusBadRequest, "InvalidParameter", fmt.Sprintf(
					"The provided instanceId %s is not an active Virtual Machine Scale Set VM instanceId.", id))
			}
			if !seen[v.ID] {
				seen[v.ID] = true
				targets = append(targets, v)
			}
		}
	}
	kind := opPower
	switch action {
	case "delete":
		kind = opDeleteInstances
	case "reimage":
		kind = opReimage
	}
	if o := e.preemptLocked(kind, s, now); o != nil {
		return accepted(o)
	}
	o := e.beginOpLocked(kind, s, now)
	for _, v := range targets {
		if action == "delete" {
			v.markDeleting(o.ID)
			continue
		}
		v.State, v.Op = stUpdating, o.ID
		switch action {
		case "powerOff":
			v.Power, v.PowerGoal = pwStopping, pwStopped
		case "deallocate":
			v.Power, v.PowerGoal = pwDeallocating, pwDeallocated
		default: // reimage, restart, start
			v.Power, v.PowerGoal = pwStarting, pwRunning
		}
	}
	if action == "delete" {
		s.Capacity = max(0, s.Capacity-len(targets))
		s.ETag++
		s.State, s.StateOp = stUpdating, o.ID
	}
	return accepted(o)
}

// --- VMs ---

func (e *Emulator) handleListVMs(w http.ResponseWriter, r *http.Request, sub, rg, name string) {
	expand := expandsInstanceView(r)
	e.answer(w, r, func(time.Time) reply {
		s, miss := e.parentLocked(sub, rg, name)
		if s == nil {
			return miss
		}
		vms := s.sortedVMs()
		view := s.view()
		return reply{status: http.StatusOK, body: e.listPage(r, vmKeys(vms), func(i int) any {
			return e.renderVM(s, &view, vms[i], expand)
		})}
	})
}

// vmKeys sort instance ids as strings in numeric order, for $skiptoken.
func vmKeys(vms []*vm) []string {
	keys := make([]string, len(vms))
	for i, v := range vms {
		keys[i] = fmt.Sprintf("%010d", v.ID)
	}
	return keys
}

// expandsInstanceView reports whether a request asks for VMs' instance views.
func expandsInstanceView(r *http.Request) bool {
	return strings.Contains(strings.ToLower(r.URL.Query().Get("$expand")), "instanceview")
}

func (e *Emulator) handleGetVM(w http.ResponseWriter, r *http.Request, sub, rg, name, id string, onlyView bool) {
	expand := expandsInstanceView(r)
	e.answer(w, r, func(time.Time) reply {
		s, v, miss := e.vmLocked(sub, rg, name, id)
		if v == nil {
			return miss
		}
		view := s.view()
		if onlyView {
			return okReply(instanceView(&view, v))
		}
		return okReply(e.renderVM(s, &view, v, expand))
	})
}

// handleSetInstanceView summarises the VMs' provisioning states.
func (e *Emulator) handleSetInstanceView(w http.ResponseWriter, r *http.Request, sub, rg, name string) {
	e.answer(w, r, func(time.Time) reply {
		s, miss := e.setLocked(sub, rg, name)
		if s == nil {
			return miss
		}
		counts := map[string]int{}
		for _, v := range s.VMs {
			counts["ProvisioningState/"+strings.ToLower(v.State)]++
		}
		codes := make([]string, 0, len(counts))
		for c := range counts {
			codes = append(codes, c)
		}
		slices.Sort(codes)
		summary := make([]map[string]any, 0, len(codes))
		for _, c := range codes {
			summary = append(summary, map[string]any{"code": c, "count": counts[c]})
		}
		return okReply(map[string]any{
			"virtualMachine": map[string]any{"statusesSummary": summary},
			"statuses": []map[string]any{{
				"code": "ProvisioningState/" + strings.ToLower(s.State), "level": "Info", "displayStatus": s.State,
			}},
		})
	})
}

// --- rendering ---

// renderSet renders a scale set as ARM returns it, with provisioningState
// state. Secrets the client sent are not returned.
func (e *Emulator) renderSet(s *scaleSet, state string) map[string]any {
	out := make(map[string]any, len(s.Model)+8)
	for k, v := range s.Model {
		out[k] = v
	}
	props := map[string]any{}
	if p, ok := s.Model["properties"].(map[string]any); ok {
		for k, v := range p {
			props[k] = v
		}
	}
	if vmp, ok := props["virtualMachineProfile"].(map[string]any); ok {
		if osp, ok := vmp["osProfile"].(map[string]any); ok {
			if _, secret := osp["adminPassword"]; secret {
				vmp = mergePatch(vmp, map[string]any{"osProfile": map[string]any{"adminPassword": nil}})
				props["virtualMachineProfile"] = vmp
			}
		}
	}
	props["provisioningState"] = state
	props["uniqueId"] = s.UniqueID
	props["timeCreated"] = s.Created
	if _, ok := props["orchestrationMode"]; !ok {
		props["orchestrationMode"] = "Uniform"
	}
	sku := make(map[string]any, len(s.SKU)+1)
	for k, v := range s.SKU {
		sku[k] = v
	}
	sku["capacity"] = s.Capacity
	out["id"] = resourceID(s.Sub, s.RG, "Microsoft.Compute", "virtualMachineScaleSets", s.Name)
	out["name"] = s.Name
	out["type"] = "Microsoft.Compute/virtualMachineScaleSets"
	out["location"] = s.Location
	if s.Tags != nil {
		out["tags"] = s.Tags
	}
	out["sku"] = sku
	out["etag"] = s.etag()
	out["properties"] = props
	return out
}

// setView is what VMs and NICs take from their scale set's model.
type setView struct {
	nicName, ipcfgName, subnetID string
	dnsServers                   []any
	accelerated                  bool
	osType                       string
	namePrefix                   string
	spot                         bool
	evictionPolicy               string
}

func (s *scaleSet) view() setView { return viewOf(s.Name, s.Model) }

// viewOf is the view of a scale set named name with model model.
func viewOf(name string, model map[string]any) setView {
	vmp := dig(model, "properties", "virtualMachineProfile")
	v := setView{nicName: name + "-nic", ipcfgName: "ipconfig1", osType: "Windows", namePrefix: name}
	if nics, ok := dig(vmp, "networkProfile", "networkInterfaceConfigurations").([]any); ok && len(nics) > 0 {
		nic := nics[0]
		for _, n := range nics {
			if p, _ := dig(n, "properties", "primary").(bool); p {
				nic = n
				break
			}
		}
		if n, _ := dig(nic, "name").(string); n != "" {
			v.nicName = n
		}
		v.accelerated, _ = dig(nic, "properties", "enableAcceleratedNetworking").(bool)
		v.dnsServers, _ = dig(nic, "properties", "dnsSettings", "dnsServers").([]any)
		if ipcs, ok := dig(nic, "properties", "ipConfigurations").([]any); ok && len(ipcs) > 0 {
			if n, _ := dig(ipcs[0], "name").(string); n != "" {
				v.ipcfgName = n
			}
			v.subnetID, _ = dig(ipcs[0], "properties", "subnet", "id").(string)
		}
	}
	if t, _ := dig(vmp, "storageProfile", "osDisk", "osType").(string); t != "" {
		v.osType = t
	} else if dig(vmp, "osProfile", "linuxConfiguration") != nil {
		v.osType = "Linux"
	}
	if p, _ := dig(vmp, "osProfile", "computerNamePrefix").(string); p != "" {
		v.namePrefix = p
	}
	prio, _ := dig(vmp, "priority").(string)
	v.spot = strings.EqualFold(prio, "Spot") || strings.EqualFold(prio, "Low")
	v.evictionPolicy, _ = dig(vmp, "evictionPolicy").(string)
	return v
}

// computerName is Azure's: the prefix and the instance id in base 36 on six
// characters.
func (v *setView) computerName(id int) string {
	n := strings.ToUpper(strconv.FormatInt(int64(id), 36))
	if len(n) < 6 {
		n = strings.Repeat("0", 6-len(n)) + n
	}
	return v.namePrefix + n
}

type idRef struct {
	ID string `json:"id"`
}

type vmJSON struct {
	Name       string         `json:"name"`
	ID         string         `json:"id"`
	Type       string         `json:"type"`
	Location   string         `json:"location"`
	Tags       map[string]any `json:"tags,omitempty"`
	InstanceID string         `json:"instanceId"`
	SKU        *vmSKUJSON     `json:"sku,omitempty"`
	Properties vmPropsJSON    `json:"properties"`
}

type vmSKUJSON struct {
	Name string `json:"name"`
	Tier string `json:"tier,omitempty"`
}

type vmPropsJSON struct {
	LatestModelApplied bool               `json:"latestModelApplied"`
	VMID               string             `json:"vmId"`
	InstanceView       *instanceViewJSON  `json:"instanceView,omitempty"`
	HardwareProfile    map[string]any     `json:"hardwareProfile"`
	StorageProfile     storageProfileJSON `json:"storageProfile"`
	OSProfile          map[string]any     `json:"osProfile"`
	NetworkProfile     vmNetworkProfile   `json:"networkProfile"`
	ProvisioningState  string             `json:"provisioningState"`
	TimeCreated        time.Time          `json:"timeCreated"`
}

type storageProfileJSON struct {
	ImageReference map[string]any `json:"imageReference,omitempty"`
	OSDisk         osDiskJSON     `json:"osDisk"`
}

type osDiskJSON struct {
	OSType       string `json:"osType"`
	Name         string `json:"name"`
	CreateOption string `json:"createOption"`
	Caching      string `json:"caching"`
}

type vmNetworkProfile struct {
	NetworkInterfaces []nicRefJSON `json:"networkInterfaces"`
}

type nicRefJSON struct {
	ID         string `json:"id"`
	Properties struct {
		Primary bool `json:"primary"`
	} `json:"properties"`
}

type instanceViewJSON struct {
	PlatformUpdateDomain int          `json:"platformUpdateDomain"`
	PlatformFaultDomain  int          `json:"platformFaultDomain"`
	ComputerName         string       `json:"computerName"`
	OSName               string       `json:"osName"`
	Statuses             []statusJSON `json:"statuses"`
}

type statusJSON struct {
	Code          string     `json:"code"`
	Level         string     `json:"level"`
	DisplayStatus string     `json:"displayStatus"`
	Time          *time.Time `json:"time,omitempty"`
}

func vmID(s *scaleSet, id int) string {
	return resourceID(s.Sub, s.RG, "Microsoft.Compute", "virtualMachineScaleSets", s.Name, "virtualMachines", strconv.Itoa(id))
}

func nicID(s *scaleSet, view *setView, id int) string {
	return vmID(s, id) + "/networkInterfaces/" + view.nicName
}

func (e *Emulator) renderVM(s *scaleSet, view *setView, v *vm, expand bool) vmJSON {
	out := vmJSON{
		Name:       s.vmName(v.ID),
		ID:         vmID(s, v.ID),
		Type:       "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
		Location:   s.Location,
		Tags:       v.Tags,
		InstanceID: strconv.Itoa(v.ID),
	}
	if v.Size != "" {
		tier, _ := s.SKU["tier"].(string)
		out.SKU = &vmSKUJSON{Name: v.Size, Tier: tier}
	}
	p := &out.Properties
	p.LatestModelApplied = v.ModelGen == s.ModelGen
	p.VMID = v.VMID
	p.HardwareProfile = map[string]any{"vmSize": v.Size}
	p.StorageProfile = storageProfileJSON{
		ImageReference: v.Image,
		OSDisk: osDiskJSON{
			OSType:       view.osType,
			Name:         fmt.Sprintf("%s_OsDisk_1_%s", s.vmName(v.ID), strings.ReplaceAll(v.VMID, "-", "")),
			CreateOption: "FromImage",
			Caching:      "ReadOnly",
		},
	}
	p.OSProfile = map[string]any{"computerName": view.computerName(v.ID)}
	ref := nicRefJSON{ID: nicID(s, view, v.ID)}
	ref.Properties.Primary = true
	p.NetworkProfile.NetworkInterfaces = []nicRefJSON{ref}
	p.ProvisioningState = v.State
	p.TimeCreated = v.Created
	if expand {
		p.InstanceView = instanceView(view, v)
	}
	return out
}

// instanceView reports provisioning and power state as ARM's status codes.
func instanceView(view *setView, v *vm) *instanceViewJSON {
	osName := "Windows"
	if view.osType == "Linux" {
		osName = "Linux"
	}
	iv := &instanceViewJSON{
		PlatformUpdateDomain: v.ID % 5,
		PlatformFaultDomain:  v.ID % 3,
		ComputerName:         view.computerName(v.ID),
		OSName:               osName,
	}
	ps := statusJSON{Level: "Info"}
	switch v.State {
	case stFailed:
		ps.Code, ps.Level, ps.DisplayStatus = "ProvisioningState/failed/"+codeOSProvisioningTimeout, "Error", "Provisioning failed"
	default:
		ps.Code = "ProvisioningState/" + strings.ToLower(v.State)
		ps.DisplayStatus = map[string]string{
			stCreating: "Creating", stUpdating: "Updating", stSucceeded: "Provisioning succeeded", stDeleting: "Deleting",
		}[v.State]
	}
	if v.State == stSucceeded {
		t := v.Created
		ps.Time = &t
	}
	iv.Statuses = append(iv.Statuses, ps)
	if v.Power != "" {
		iv.Statuses = append(iv.Statuses, statusJSON{
			Code: "PowerState/" + v.Power, Level: "Info", DisplayStatus: "VM " + v.Power,
		})
	}
	return iv
}
