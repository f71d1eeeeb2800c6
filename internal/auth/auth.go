// Package auth holds sandfleet's API tokens: how one is made, how it is kept
// (hashed, in auth.tokens_file) and how a key presented to the API is checked.
//
// The tokens file has one token a line:
//
//	# comments and blank lines are allowed
//	ci sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 created=2026-11-30T12:00:00Z
//
// NAME ([A-Za-z0-9_.-]+, unique in the file), the SHA-256 of the token in
// lowercase hex, and when it was made (RFC 3339, UTC; optional in a line
// written by hand). The token itself is never stored: it is shown once, by
// `sandfleet token create`, and only its hash is kept.
//
// SHA-256 and not a password hash (bcrypt, argon2): a token is 32 bytes from
// crypto/rand, so finding one from its hash is a search of 2^256 keys, which
// no amount of hashing speed brings within reach. Slow hashes exist to protect
// guessable passwords; here they would only make every API request slower.
package auth

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Prefix starts every token, so that one found in a file, a log or a
// paste is recognisable as a sandfleet token (and secret scanners can match it).
const Prefix = "sf_"

// hashScheme names the hash in the file, so that another can follow
// without ambiguity.
const hashScheme = "sha256:"

// Token is one line of the tokens file: a name and the hash of the key.
type Token struct {
	Name string
	Hash [sha256.Size]byte
	// Created is when the token was made; zero when the line does not say.
	Created time.Time
	// Line is where the token is in its file (1-based); 0 for a new one.
	Line int
}

// String is the token's line in the file, without the newline.
func (t Token) String() string {
	s := t.Name + " " + hashScheme + hex.EncodeToString(t.Hash[:])
	if !t.Created.IsZero() {
		s += " created=" + t.Created.UTC().Format(time.RFC3339)
	}
	return s
}

// NewKey returns a new token: Prefix and 32 bytes from crypto/rand in
// unpadded base64url (46 characters, nothing a shell or a header needs quoted).
func NewKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return Prefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Hash is what the tokens file keeps of a key.
func Hash(key string) [sha256.Size]byte { return sha256.Sum256([]byte(key)) }

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// ValidName reports whether name can name a token: it is a single field of
// the file's line, and what `token revoke` is given.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("token name %q: use 1 to 64 letters, digits, '_', '.' or '-'", name)
	}
	return nil
}

// Parse reads a tokens file. Its errors name the line and what is wrong with
// it but never quote it: a line that does not parse may be a token pasted in
// clear.
func Parse(data []byte) ([]Token, error) {
	var (
		tokens []Token
		errs   []error
		names  = map[string]int{}
	)
	for i, raw := range bytes.Split(data, []byte("\n")) {
		n := i + 1
		line := strings.TrimSpace(string(raw))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		t, err := parseLine(line)
		if err != nil {
			errs = append(errs, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		t.Line = n
		if first, dup := names[t.Name]; dup {
			errs = append(errs, fmt.Errorf("line %d: token name %q already used on line %d", n, t.Name, first))
			continue
		}
		names[t.Name] = n
		tokens = append(tokens, t)
	}
	return tokens, errors.Join(errs...)
}

// lineFormat is how Parse's errors say what a line should be.
const lineFormat = "want NAME sha256:HEX [created=TIME] (tokens are never kept in clear: make them with `sandfleet token create NAME`)"

func parseLine(line string) (Token, error) {
	fields := strings.Fields(line)
	if len(fields) < 2 {
		return Token{}, errors.New(lineFormat)
	}
	// Until the hash has parsed, the line may be a key in clear followed by
	// anything: not even its first field is quoted.
	var t Token
	if !nameRE.MatchString(fields[0]) {
		return t, fmt.Errorf("the name is not 1 to 64 letters, digits, '_', '.' or '-'; %s", lineFormat)
	}
	hexHash, ok := strings.CutPrefix(fields[1], hashScheme)
	if !ok {
		return t, fmt.Errorf("the second field is not sha256:HEX; %s", lineFormat)
	}
	h, err := hex.DecodeString(hexHash)
	if err != nil || len(h) != sha256.Size {
		return t, errors.New("the hash is not 64 hexadecimal digits")
	}
	t.Name = fields[0]
	copy(t.Hash[:], h)
	for _, f := range fields[2:] {
		v, ok := strings.CutPrefix(f, "created=")
		if !ok {
			return t, fmt.Errorf("token %q: unknown field after the hash (only created=TIME may follow)", t.Name)
		}
		c, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return t, fmt.Errorf("token %q: created= is not an RFC 3339 time (e.g. 2026-11-30T12:00:00Z)", t.Name)
		}
		t.Created = c.UTC()
	}
	return t, nil
}

// compare is subtle.ConstantTimeCompare; a variable so that a test can count
// that Match compares with every token.
var compare = subtle.ConstantTimeCompare

// Match returns the name of the token whose hash is key's. It compares the
// key's hash with every stored hash, in constant time, and does not stop at
// a match: how long it takes says nothing about which token, if any, matched
// nor how much of a hash did. (Comparing hashes, not keys, also means the
// bytes compared are not ones a client chose.)
func Match(tokens []Token, key string) (name string, ok bool) {
	if key == "" {
		return "", false
	}
	h := Hash(key)
	found, at := 0, 0
	for i := range tokens {
		eq := compare(h[:], tokens[i].Hash[:])
		at = subtle.ConstantTimeSelect(eq, i, at)
		found |= eq
	}
	if found == 0 {
		return "", false
	}
	return tokens[at].Name, true
}
