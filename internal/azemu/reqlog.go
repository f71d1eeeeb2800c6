package azemu

import (
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// RequestRecord is one ARM request the emulator served, as
// GET /_emulator/requests lists it.
type RequestRecord struct {
	Time   time.Time `json:"time"`
	Method string    `json:"method"`
	Path   string    `json:"path"` // without the query string
	Status int       `json:"status"`
	// Body is the request body as sent: its JSON when it is JSON of at most
	// maxLoggedBody bytes, else a JSON string of its first maxLoggedBody
	// bytes; null when empty.
	Body json.RawMessage `json:"body"`
}

const (
	maxLoggedBody     = 4 << 10
	maxLoggedRequests = 100_000
)

// requestLog keeps the last maxLoggedRequests records in a ring.
type requestLog struct {
	mu    sync.Mutex
	ring  []RequestRecord
	start int // index of the oldest record once the ring is full
}

func (l *requestLog) add(r RequestRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ring) < maxLoggedRequests {
		l.ring = append(l.ring, r)
		return
	}
	l.ring[l.start] = r
	l.start = (l.start + 1) % len(l.ring)
}

// all returns the records, oldest first.
func (l *requestLog) all() []RequestRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]RequestRecord, 0, len(l.ring))
	out = append(out, l.ring[l.start:]...)
	return append(out, l.ring[:l.start]...)
}

func (l *requestLog) clear() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring, l.start = nil, 0
}

// loggedBody renders a request body for the log.
func loggedBody(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	if len(b) <= maxLoggedBody && json.Valid(b) {
		return json.RawMessage(append([]byte(nil), b...))
	}
	if len(b) > maxLoggedBody {
		b = b[:maxLoggedBody]
	}
	s, _ := json.Marshal(string(b))
	return s
}

// AcceptedPerInstance reads a request log (Requests, or GET
// /_emulator/requests) and counts, per instance id, the accepted (2xx)
// requests of method to a path ending in suffix (case-insensitive) whose body
// names the instance in instanceIds: how often an operation on each instance
// reached the cloud, e.g. AcceptedPerInstance(rs, "POST", "/reimage").
func AcceptedPerInstance(rs []RequestRecord, method, suffix string) map[string]int {
	out := map[string]int{}
	for _, r := range rs {
		if r.Method != method || r.Status < 200 || r.Status >= 300 ||
			!strings.HasSuffix(strings.ToLower(r.Path), strings.ToLower(suffix)) {
			continue
		}
		var body struct {
			InstanceIDs []string `json:"instanceIds"`
		}
		if json.Unmarshal(r.Body, &body) != nil {
			continue
		}
		for _, id := range body.InstanceIDs {
			out[id]++
		}
	}
	return out
}
