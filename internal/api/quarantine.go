package api

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/sandfleet/sandfleet/internal/store"
)

// quarantinable are the states an operator may take a machine out of: not
// one a task or an operation holds, and not one already out of service.
var quarantinable = []store.MachineState{store.Provisioning, store.Ready, store.Dirty}

// maxReason bounds an operator's reason: it is stored on the machine and in
// its event history.
const maxReason = 1000

// quarantine takes a machine out of service with a reason (field "reason").
// POST machines/quarantine/<name>/.
func (s *Server) quarantine(w http.ResponseWriter, r *http.Request, b *backend) {
	note, ok := readNote(w, r)
	if !ok {
		return
	}
	reason := note.Reason
	if reason == "" {
		reason = "quarantined by an operator"
	}
	s.move(w, r, b, quarantinable, store.Quarantined, reason, &reason)
}

// release puts a quarantined machine back: dirty, so it is reimaged before any
// task gets it. An optional reason (field "reason") is kept in the machine's
// event history. POST machines/release/<name>/.
func (s *Server) release(w http.ResponseWriter, r *http.Request, b *backend) {
	note, ok := readNote(w, r)
	if !ok {
		return
	}
	cause := "released by an operator; reimaging before use"
	if note.Reason != "" {
		cause = fmt.Sprintf("released by an operator (%s); reimaging before use", note.Reason)
	}
	s.move(w, r, b, []store.MachineState{store.Quarantined}, store.Dirty, cause, nil)
}

// readNote reads the operator's note of quarantine and release and checks
// its reason; on failure it has answered and ok is false.
func readNote(w http.ResponseWriter, r *http.Request) (note operatorNote, ok bool) {
	if err := readBody(w, r, &note); err != nil {
		failBody(w, err)
		return note, false
	}
	note.Reason = strings.TrimSpace(note.Reason)
	if len(note.Reason) > maxReason {
		fail(w, http.StatusBadRequest, fmt.Sprintf("reason: longer than %d characters", maxReason))
		return note, false
	}
	return note, true
}

// move applies one operator transition by compare-and-set from the state the
// machine is in, if that is one of from.
func (s *Server) move(w http.ResponseWriter, r *http.Request, b *backend, from []store.MachineState, to store.MachineState, cause string, reason *string) {
	m, ok := s.machine(w, r, b)
	if !ok {
		return
	}
	name := m.Label
	if !slices.Contains(from, m.State) {
		fail(w, http.StatusConflict, fmt.Sprintf("machine %q is %s; this needs it %v", name, m.State, from))
		return
	}
	m, err := b.store.TransitionMachine(r.Context(), store.Transition{Label: name, From: m.State, Version: m.Version,
		To: to, Cause: cause, QuarantineReason: reason})
	if errors.Is(err, store.ErrStale) {
		fail(w, http.StatusConflict, fmt.Sprintf("machine %q changed meanwhile; try again", name))
		return
	}
	if err != nil {
		s.internal(w, r, err)
		return
	}
	s.log.Info("machine state", "label", m.Label, "pool", m.Pool, "to", to, "cause", cause)
	b.fleet.Trigger()
	reply(w, MachineJSON(m))
}
