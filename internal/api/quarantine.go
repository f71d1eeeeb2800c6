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

// quarantine takes a machine out of service with a reason (form field
// "reason"). POST machines/quarantine/<name>/.
func (s *Server) quarantine(w http.ResponseWriter, r *http.Request) {
	reason := strings.TrimSpace(r.FormValue("reason"))
	if reason == "" {
		reason = "quarantined by an operator"
	}
	if len(reason) > 1000 {
		fail(w, http.StatusBadRequest, "reason: longer than 1000 characters")
		return
	}
	s.move(w, r, quarantinable, store.Quarantined, reason, &reason)
}

// release puts a quarantined machine back: dirty, so it is reimaged before any
// task gets it. POST machines/release/<name>/.
func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	s.move(w, r, []store.MachineState{store.Quarantined}, store.Dirty, "released by an operator; reimaging before use", nil)
}

// move applies one operator transition by compare-and-set from the state the
// machine is in, if that is one of from.
func (s *Server) move(w http.ResponseWriter, r *http.Request, from []store.MachineState, to store.MachineState, cause string, reason *string) {
	m, ok := s.machine(w, r)
	if !ok {
		return
	}
	name := m.Label
	if !slices.Contains(from, m.State) {
		fail(w, http.StatusConflict, fmt.Sprintf("machine %q is %s; this needs it %v", name, m.State, from))
		return
	}
	m, err := s.store.TransitionMachine(r.Context(), store.Transition{Label: name, From: m.State, Version: m.Version,
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
	s.fleet.Trigger()
	reply(w, MachineJSON(m))
}
