package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// maxBody bounds a request body of fields: a few lines of text fit many
// times over, and a client cannot make the daemon buffer megabytes.
const maxBody = 64 << 10

// operatorNote is the body machines/quarantine/ and machines/release/ take.
type operatorNote struct {
	Reason string `json:"reason"`
}

// errUnsupportedType is a body in a Content-Type the API does not read.
var errUnsupportedType = errors.New("unsupported body")

// readBody reads note from the request body: form fields
// (application/x-www-form-urlencoded, multipart/form-data) or one JSON object
// (application/json); an empty body sets nothing. It is strict, because a
// field the server silently ignored would pass a typo for the default: an
// unknown field, a field given twice, or a body that does not parse is an
// error naming it.
func readBody(w http.ResponseWriter, r *http.Request, note *operatorNote) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	var mediaType string
	if ct := r.Header.Get("Content-Type"); ct != "" {
		var err error
		if mediaType, _, err = mime.ParseMediaType(ct); err != nil {
			return fmt.Errorf("Content-Type %q: %v", ct, err)
		}
	}
	switch mediaType {
	case "application/json":
		return readJSON(r.Body, note)
	case "application/x-www-form-urlencoded":
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		vals, err := url.ParseQuery(string(b))
		if err != nil {
			return fmt.Errorf("body: malformed form: %v", err)
		}
		return formNote(vals, note)
	case "multipart/form-data":
		mr, err := r.MultipartReader()
		if err != nil {
			return fmt.Errorf("body: malformed multipart form: %v", err)
		}
		form, err := mr.ReadForm(maxBody)
		if err != nil {
			if tooBig := new(http.MaxBytesError); errors.As(err, &tooBig) {
				return err
			}
			return fmt.Errorf("body: malformed multipart form: %v", err)
		}
		defer form.RemoveAll()
		if files := slices.Sorted(maps.Keys(form.File)); len(files) > 0 {
			return fmt.Errorf("form field %q: a file, where text is expected", files[0])
		}
		return formNote(form.Value, note)
	default:
		// Without a Content-Type (curl -X POST) or with another one, only an
		// empty body can be read without guessing.
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		what := "a body without a Content-Type"
		if mediaType != "" {
			what = "Content-Type " + mediaType
		}
		return fmt.Errorf("%w: %s; send application/x-www-form-urlencoded, multipart/form-data or application/json",
			errUnsupportedType, what)
	}
}

// readJSON decodes one JSON object and nothing after it.
func readJSON(body io.Reader, note *operatorNote) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(note)
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF):
		return nil // an empty body
	case errors.As(err, &tooBig):
		return err
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("body: truncated JSON")
	case err != nil:
		return fmt.Errorf("body: invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if err := dec.Decode(new(json.RawMessage)); !errors.Is(err, io.EOF) {
		if errors.As(err, &tooBig) {
			return err
		}
		return errors.New("body: more than one JSON value")
	}
	return nil
}

// formNote takes note's fields from form values.
func formNote(vals map[string][]string, note *operatorNote) error {
	for _, name := range slices.Sorted(maps.Keys(vals)) {
		if name != "reason" {
			return fmt.Errorf("form field %q is not known: this endpoint takes reason", name)
		}
		if n := len(vals[name]); n > 1 {
			return fmt.Errorf("form field %q: given %d times", name, n)
		}
		note.Reason = vals[name][0]
	}
	return nil
}

// failBody answers a body readBody could not read.
func failBody(w http.ResponseWriter, err error) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body: larger than the limit of %d bytes", tooBig.Limit))
	case errors.Is(err, errUnsupportedType):
		fail(w, http.StatusUnsupportedMediaType, err.Error())
	default:
		fail(w, http.StatusBadRequest, err.Error())
	}
}
