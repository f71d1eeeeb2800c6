package azemu

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Error codes of failed operations.
const (
	codeOperationPreempted    = "OperationPreempted"
	codeOSProvisioningTimeout = "OSProvisioningTimedOut"
)

// beginOpLocked records a new operation on scale set s. It ends after the
// LRO delay in force. With preempt set it changes nothing and ends Failed.
func (e *Emulator) beginOpLocked(kind string, s *scaleSet, now time.Time) *operation {
	loc := s.Location
	if loc == "" {
		loc = "local"
	}
	o := &operation{
		ID:       newID(),
		Kind:     kind,
		Sub:      s.Sub,
		SetKey:   s.key(),
		Location: strings.ToLower(strings.ReplaceAll(loc, " ", "")),
		Start:    now,
		End:      now.Add(e.faults.lroDelay(e.opts.LRODelay)),
	}
	e.st.ops[o.ID] = o
	e.st.addPending(o)
	e.gen++
	e.log.Info("operation begun", "operation_id", o.ID, "kind", kind, "scale_set", s.Name,
		"resource_group", s.RG, "ends", o.End.Format(time.RFC3339Nano))
	return o
}

// preemptLocked consumes an armed OperationPreempted fault for s, if any,
// and returns the failed operation standing for the preempted request.
func (e *Emulator) preemptLocked(kind string, s *scaleSet, now time.Time) *operation {
	if !e.faults.preempts(s.Name) {
		return nil
	}
	o := e.beginOpLocked(kind, s, now)
	o.FailCode = codeOperationPreempted
	o.FailMsg = "Operation '" + kind + "' on scale set '" + s.Name + "' was preempted by a higher priority operation."
	return o
}

// settleLocked ends every operation whose time has come, oldest first.
func (e *Emulator) settleLocked(now time.Time) {
	for len(e.st.pending) > 0 && !e.st.pending[0].End.After(now) {
		o := e.st.pending[0]
		e.st.pending = e.st.pending[1:]
		e.completeLocked(o)
		e.gen++
	}
}

// completeLocked applies the end of an operation: every VM it owns moves on.
func (e *Emulator) completeLocked(o *operation) {
	o.Done = true
	s := e.st.sets[o.SetKey]
	e.log.Info("operation ended", "operation_id", o.ID, "kind", o.Kind, "status", o.status(o.End),
		"code", o.FailCode)
	if s == nil || o.FailCode == codeOperationPreempted {
		return
	}
	if o.Kind == opDeleteSet {
		for _, v := range s.VMs {
			e.st.ips.release(v.IP)
		}
		delete(e.st.sets, o.SetKey)
		return
	}
	for id, v := range s.VMs {
		if v.Op != o.ID {
			continue
		}
		v.Op = ""
		switch v.State {
		case stCreating:
			if v.FailProv {
				v.State, v.Power = stFailed, pwStopped
			} else {
				v.State, v.Power = stSucceeded, pwRunning
			}
		case stUpdating:
			// Reimage, restart, start, power off, deallocate: the guest comes
			// back fresh, so an admin agent override ends here.
			v.State, v.Agent, v.FailProv = stSucceeded, "", false
			v.Boot++
			v.Power = v.PowerGoal
			if v.Power == "" {
				v.Power = pwRunning
			}
			if o.Kind == opReimage {
				v.ModelGen = s.ModelGen
				v.Image = imageReference(s.Model)
			}
		case stDeleting:
			e.st.ips.release(v.IP)
			delete(s.VMs, id)
		}
		v.PowerGoal = ""
	}
	if s.StateOp == o.ID {
		s.State, s.StateOp = stSucceeded, ""
	}
}

// opURLs are the Azure-AsyncOperation and Location URLs of an operation, on
// the host the client used and with the api-version it used, as ARM hands
// them out.
func opURLs(r *http.Request, o *operation) (async, location string) {
	base := "https://" + r.Host + "/subscriptions/" + url.PathEscape(o.Sub) +
		"/providers/Microsoft.Compute/locations/" + url.PathEscape(o.Location) +
		"/operations/" + o.ID
	v := url.QueryEscape(r.URL.Query().Get("api-version"))
	return base + "?api-version=" + v, base + "?monitor=true&api-version=" + v
}

// setOpHeaders adds the polling headers of o to a response.
func setOpHeaders(w http.ResponseWriter, r *http.Request, o *operation, now time.Time) {
	async, loc := opURLs(r, o)
	w.Header().Set("Azure-AsyncOperation", async)
	w.Header().Set("Location", loc)
	setRetryAfter(w, o, now)
}

// setRetryAfter tells a client when to poll o: the seconds left until its
// end, rounded up (0 once it has ended). ARM sends Retry-After with every
// reply that begins an operation and every poll of one in progress; its
// value is the emulator's choice, and the truest one it has.
func setRetryAfter(w http.ResponseWriter, o *operation, now time.Time) {
	left := max(o.End.Sub(now), 0)
	w.Header().Set("Retry-After", strconv.FormatInt(int64((left+time.Second-1)/time.Second), 10))
}

// handleOperation answers a poll of an operation: the Azure-AsyncOperation
// status document, or with monitor=true the Location protocol (202 while in
// progress, then 200 with no body or the error).
func (e *Emulator) handleOperation(w http.ResponseWriter, r *http.Request, sub, id string) {
	now := time.Now()
	e.mu.Lock()
	e.settleLocked(now)
	o := e.st.ops[id]
	var status string
	var op operation
	if o != nil && strings.EqualFold(o.Sub, sub) {
		op = *o
		status = o.status(now)
	}
	gen := e.gen
	retryAfter := e.faults.retryAfter()
	e.mu.Unlock()
	if status == "" {
		armError(w, http.StatusNotFound, "ResourceNotFound", "The operation '"+id+"' was not found.")
		return
	}
	retry := func() {
		setRetryAfter(w, &op, now)
		paceRetryAfter(w.Header(), retryAfter)
	}
	// Agents are up by the time a client hears that the operation succeeded.
	_ = e.publish(gen)

	if r.URL.Query().Get("monitor") == "true" {
		switch status {
		case "InProgress":
			_, loc := opURLs(r, &op)
			w.Header().Set("Location", loc)
			retry()
			w.WriteHeader(http.StatusAccepted)
		case "Failed":
			armError(w, failStatus(op.FailCode), op.FailCode, op.FailMsg)
		default:
			w.WriteHeader(http.StatusOK)
		}
		return
	}
	body := map[string]any{
		"name":      op.ID,
		"status":    status,
		"startTime": op.Start,
	}
	if status == "InProgress" {
		retry()
	} else {
		body["endTime"] = op.End
	}
	if status == "Failed" {
		body["error"] = map[string]any{"code": op.FailCode, "message": op.FailMsg}
	}
	writeJSON(w, http.StatusOK, body)
}

// failStatus is the HTTP status a failed operation's Location poll reports.
func failStatus(code string) int {
	if code == codeOperationPreempted {
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}
