package api

import (
	"bytes"
	"encoding/json"
	"net/http"
)

// CAPE's API is Django REST Framework rendering Python dicts: keys in the
// order the view set them, UTF-8 left as it is, nothing HTML-escaped. Its
// replies are written here the same way, so that a client comparing them
// with CAPE's sees no difference but the data: one line, Python's
// separators (", " and ": ").

// obj is a JSON object that keeps its keys in the order given.
type obj []field

type field struct {
	key   string
	value any
}

// MarshalJSON writes the fields in order.
func (o obj) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, err := json.Marshal(f.key)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		v, err := marshal(f.value)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// marshal encodes v without HTML escaping and without the encoder's newline.
func marshal(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// pythonSpacing puts a space after every ',' and ':' that is not inside a
// string, as Python's json.dumps does by default.
func pythonSpacing(compact []byte) []byte {
	out := make([]byte, 0, len(compact)+len(compact)/8)
	inString, escaped := false, false
	for _, c := range compact {
		out = append(out, c)
		switch {
		case inString && escaped:
			escaped = false
		case inString && c == '\\':
			escaped = true
		case c == '"':
			inString = !inString
		case !inString && (c == ',' || c == ':'):
			out = append(out, ' ')
		}
	}
	return out
}

// write answers v as JSON, in CAPE's style.
func write(w http.ResponseWriter, code int, v any) {
	b, err := marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = marshal(obj{{"error", true}, {"error_value", "encode reply: " + err.Error()}})
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(pythonSpacing(b), '\n'))
}

// reply answers data in CAPE's success envelope: "error" is an empty list.
func reply(w http.ResponseWriter, data any) {
	write(w, http.StatusOK, obj{{"error", []string{}}, {"data", data}})
}

// fail answers CAPE's failure envelope with an HTTP error status.
func fail(w http.ResponseWriter, code int, msg string) {
	write(w, code, obj{{"error", true}, {"error_value", msg}})
}
