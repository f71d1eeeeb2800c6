package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// header starts a tokens file that Create makes.
const header = `# sandfleet API tokens, one a line: NAME sha256:HEX created=TIME.
# Only hashes are kept here. Managed by: sandfleet token create|list|revoke.
`

// lockWait bounds how long an edit waits for another to finish: every wait
// is bounded, and no edit holds the lock for more than a write and a rename.
const lockWait = 10 * time.Second

// Create makes a token named name, appends its hash to the tokens file at
// path (creating the file, mode 0600, if absent) and returns the key, which
// exists nowhere else: the caller shows it once.
func Create(path, name string, now time.Time) (key string, err error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	key, err = NewKey()
	if err != nil {
		return "", err
	}
	t := Token{Name: name, Hash: Hash(key), Created: now.UTC().Truncate(time.Second)}
	err = edit(path, true, func(data []byte, tokens []Token) ([]byte, error) {
		for _, o := range tokens {
			if o.Name == name {
				return nil, fmt.Errorf("token %q already exists in %s (line %d): revoke it first, or choose another name", name, path, o.Line)
			}
		}
		if len(data) == 0 {
			data = []byte(header)
		} else if data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		return append(data, t.String()+"\n"...), nil
	})
	if err != nil {
		return "", err
	}
	return key, nil
}

// Revoke removes the token named name from the tokens file at path and
// returns how many are left. Other lines, comments included, are kept as
// they are.
func Revoke(path, name string) (left int, err error) {
	err = edit(path, false, func(data []byte, tokens []Token) ([]byte, error) {
		line := 0
		for _, t := range tokens {
			if t.Name == name {
				line = t.Line
			}
		}
		if line == 0 {
			return nil, fmt.Errorf("no token named %q in %s", name, path)
		}
		lines := bytes.SplitAfter(data, []byte("\n"))
		left = len(tokens) - 1
		return bytes.Join(append(lines[:line-1:line-1], lines[line:]...), nil), nil
	})
	return left, err
}

// List reads the tokens file at path. It takes no lock: edits replace the
// file whole, by rename, so a reader sees the old file or the new one.
func List(path string) ([]Token, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fileError(path, err)
	}
	tokens, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("tokens file %s:\n%w", path, err)
	}
	return tokens, nil
}

// fileError says what is wrong with the tokens file at path in the words
// an operator needs.
func fileError(path string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tokens file %s does not exist (sandfleet token create NAME makes it)", path)
	}
	return fmt.Errorf("tokens file: %w", err)
}

// edit changes the tokens file at path under an exclusive lock, so that
// concurrent edits (two `token create` at once) each see the other's line.
// change gets the file's bytes and tokens and returns the new bytes, which
// replace the file atomically: written to a temporary file in the same
// directory, synced, then renamed over it, so a crash leaves the old file or
// the new one, never half of one. A file that does not parse is not edited:
// the edit would hide the problem, or make it worse.
func edit(path string, create bool, change func(data []byte, tokens []Token) ([]byte, error)) error {
	dir := filepath.Dir(path)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("tokens file %s: its directory %s does not exist", path, dir)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return fmt.Errorf("tokens file %s: %w", path, err)
	}
	defer unlock()

	data, err := os.ReadFile(path)
	var mode fs.FileMode = 0o600
	var owner *syscall.Stat_t
	switch {
	case err == nil:
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("tokens file: %w", err)
		}
		mode = fi.Mode().Perm()
		owner, _ = fi.Sys().(*syscall.Stat_t)
	case errors.Is(err, fs.ErrNotExist) && create:
		data = nil
	default:
		return fileError(path, err)
	}
	tokens, err := Parse(data)
	if err != nil {
		return fmt.Errorf("tokens file %s (not changed):\n%w", path, err)
	}
	out, err := change(data, tokens)
	if err != nil {
		return err
	}
	return replace(path, out, mode, owner)
}

// lockDir takes an exclusive flock on dir. The directory, not the file: the
// file is replaced by every edit, so a lock on it would be a lock on a file
// that is no longer the tokens file by the time a waiter gets it; and a lock
// on the directory needs no lock file left lying beside the tokens.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("another sandfleet token command has held the lock on %s for %s", dir, lockWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// replace writes data to path atomically, with the old file's mode and, when
// it can, its owner: `sudo sandfleet token create` must not leave a file
// that the daemon's own user can no longer read.
func replace(path string, data []byte, mode fs.FileMode, owner *syscall.Stat_t) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".*.tmp")
	if err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	if owner != nil && (int(owner.Uid) != os.Geteuid() || int(owner.Gid) != os.Getegid()) {
		if err := tmp.Chown(int(owner.Uid), int(owner.Gid)); err != nil {
			return fmt.Errorf("tokens file %s belongs to uid %d gid %d and could not be rewritten with that owner (%w): run the command as that user or as root",
				path, owner.Uid, owner.Gid, err)
		}
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("tokens file: %w", err)
	}
	// The rename is durable once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
