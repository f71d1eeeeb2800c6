package auth

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// ErrUnknownKey is Check's answer to a key that is no token of the file.
var ErrUnknownKey = errors.New("unknown token")

// Checker checks keys against a tokens file, and reads the file again when
// it changes, so that `token create` and `token revoke` take effect in a
// running daemon without a restart.
type Checker struct {
	path string
	log  *slog.Logger

	mu     sync.Mutex
	seen   fileID
	racy   bool // the file changed close to when it was read: read it again
	tokens []Token
	// err is why the file cannot be used since it last changed; every key is
	// refused meanwhile. Failing closed is what a revoke needs: keeping the
	// last good tokens would keep the revoked one working when, say, it
	// was the last one.
	err error
}

// Open reads the tokens file at path. A file that cannot be read, does not
// parse or holds no token is an error naming it: a daemon started with it
// would refuse every request.
func Open(path string, log *slog.Logger) (*Checker, error) {
	if log == nil {
		log = slog.Default()
	}
	c := &Checker{path: path, log: log}
	id, err := stat(path)
	if err != nil {
		return nil, fmt.Errorf("auth.tokens_file: %w", fileError(path, err))
	}
	if err := c.load(id); err != nil {
		return nil, fmt.Errorf("auth.tokens_file: %w", err)
	}
	return c, nil
}

// Len is how many tokens the file held when last read.
func (c *Checker) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tokens)
}

// Check returns the name of the token key is, ErrUnknownKey if it is none,
// or, while the tokens file cannot be used, why (the caller should refuse
// the request and not blame the key).
func (c *Checker) Check(key string) (name string, err error) {
	tokens, err := c.current()
	if err != nil {
		return "", err
	}
	if name, ok := Match(tokens, key); ok {
		return name, nil
	}
	return "", ErrUnknownKey
}

// current returns the file's tokens, reading it again if it changed.
func (c *Checker) current() ([]Token, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before, prevErr := c.seen, c.err
	id, err := stat(c.path)
	switch {
	case err != nil:
		c.seen, c.tokens, c.err = fileID{}, nil, fileError(c.path, err)
	case id != c.seen || c.racy:
		_ = c.load(id) // which sets c.err
	}
	// Logged once a change, not once a request.
	switch {
	case c.err != nil && (prevErr == nil || prevErr.Error() != c.err.Error()):
		c.log.Error("tokens file unusable: every API request is refused until it is fixed", "file", c.path, "err", c.err)
	case c.err == nil && (prevErr != nil || c.seen != before):
		c.log.Info("tokens file read again", "file", c.path, "tokens", len(c.tokens))
	}
	return c.tokens, c.err
}

// load reads the file, which stat found as id.
func (c *Checker) load(id fileID) error {
	readAt := time.Now()
	data, err := os.ReadFile(c.path)
	c.seen = id
	// A file changed twice within the file system's timestamp granularity
	// (a few milliseconds), to the same size and (by inode reuse) the same
	// inode, would look unchanged after the first read. As git does with
	// its index, a file whose modification time is that close to the read
	// is read again at the next check, until it is not.
	c.racy = readAt.Sub(id.mtime) < 2*time.Second
	if err == nil {
		var tokens []Token
		if tokens, err = Parse(data); err == nil && len(tokens) == 0 {
			err = fmt.Errorf("tokens file %s holds no token: create one with `sandfleet token create NAME --tokens-file %s`", c.path, c.path)
		} else if err != nil {
			err = fmt.Errorf("tokens file %s:\n%w", c.path, err)
		}
		if err == nil {
			c.tokens, c.err = tokens, nil
			return nil
		}
	} else {
		err = fileError(c.path, err)
	}
	c.tokens, c.err = nil, err
	return err
}

// fileID is what tells that a file changed without reading it.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
	ctime    time.Time
}

func stat(path string) (fileID, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileID{}, err
	}
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = uint64(st.Dev), st.Ino
		id.ctime = time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return id, nil
}
