package guest

import (
	"archive/zip"
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
)

// standIn is sandfleet's stand-in analyzer: it speaks the result-server
// protocol and analyses nothing (see standin/analyzer.py).
//
//go:embed standin/analyzer.py
var standIn []byte

// StandInAnalyzer is the stand-in analyzer's analyzer.py.
func StandInAnalyzer() []byte { return bytes.Clone(standIn) }

var standInZip = sync.OnceValues(func() ([]byte, error) {
	return zipFiles(func(add func(name string, data []byte, mode fs.FileMode) error) error {
		return add("analyzer.py", standIn, 0o644)
	})
})

// LoadAnalyzer packages the analyzer the host sends to POST /extract: path
// is a folder (zipped as CAPE does: stored, not compressed, paths relative
// to it) or a .zip file (checked to be a zip holding analyzer.py at its
// top); "" gives the built-in stand-in analyzer.
func LoadAnalyzer(p string) ([]byte, error) {
	if p == "" {
		b, err := standInZip()
		return bytes.Clone(b), err
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("analyzer: %w", err)
	}
	if st.IsDir() {
		return zipDir(p)
	}
	if !strings.EqualFold(filepath.Ext(p), ".zip") {
		return nil, fmt.Errorf("analyzer %s: want a folder or a .zip file", p)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("analyzer: %w", err)
	}
	if err := checkZip(b); err != nil {
		return nil, fmt.Errorf("analyzer %s: %w", p, err)
	}
	return b, nil
}

// zipDir zips a folder's regular files (and links to them) under their
// paths relative to it.
func zipDir(dir string) ([]byte, error) {
	if _, err := os.Stat(filepath.Join(dir, "analyzer.py")); err != nil {
		return nil, fmt.Errorf("analyzer %s: no analyzer.py at its top: the agent would have nothing to run", dir)
	}
	b, err := zipFiles(func(add func(name string, data []byte, mode fs.FileMode) error) error {
		return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				return nil
			}
			info, err := os.Stat(p) // follows a link to a file
			if err != nil {
				return err
			}
			if !info.Mode().IsRegular() {
				return nil
			}
			rel, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return add(filepath.ToSlash(rel), data, info.Mode().Perm())
		})
	})
	if err != nil {
		return nil, fmt.Errorf("analyzer %s: %w", dir, err)
	}
	return b, nil
}

// zipFiles builds a zip from the files walk adds, stored uncompressed as
// CAPE's analyzer_zipfile does (the analyzer holds mostly compiled
// binaries; compressing them buys little and costs time per analysis).
func zipFiles(walk func(add func(name string, data []byte, mode fs.FileMode) error) error) ([]byte, error) {
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	err := walk(func(name string, data []byte, mode fs.FileMode) error {
		h := &zip.FileHeader{Name: name, Method: zip.Store}
		h.SetMode(mode)
		w, err := zw.CreateHeader(h)
		if err != nil {
			return err
		}
		_, err = w.Write(data)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// checkZip makes sure b is a zip the agent can extract and run: analyzer.py
// at its top, and no entry that would land outside the analyzer's folder.
func checkZip(b []byte) error {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return fmt.Errorf("not a zip file: %w", err)
	}
	found := false
	for _, f := range zr.File {
		name := strings.ReplaceAll(f.Name, `\`, "/")
		clean := path.Clean(name)
		if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(name, ":") {
			return fmt.Errorf("entry %q would land outside the analyzer's folder", f.Name)
		}
		if clean == "analyzer.py" {
			found = true
		}
	}
	if !found {
		return errors.New("no analyzer.py at its top: the agent would have nothing to run")
	}
	return nil
}
