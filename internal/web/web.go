// Package web is the operator's dashboard: one page, its script and its
// style sheet, embedded in the binary and served by the daemon, so that it
// works where the daemon runs — no build step, no framework, nothing fetched
// from another host. The page reads everything it shows from one JSON
// endpoint of the API (GET /apiv2/dashboard/), polled, with the API's token
// when the API asks for one.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed index.html static
var files embed.FS

// Handler serves the page at / and its assets under /static/. They hold no
// data, so they are served to anyone; the data behind them is the API's,
// under its auth.
func Handler() http.Handler {
	index, err := files.ReadFile("index.html")
	if err != nil {
		panic(err) // embedded: cannot be missing from a build that compiled
	}
	assets, err := fs.Sub(files, "static")
	if err != nil {
		panic(err)
	}
	serve := http.StripPrefix("/static/", http.FileServerFS(assets))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// The page runs only its own script and talks only to its own
		// origin: a target name crafted to inject markup gets nowhere.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// Embedded files carry no modification time to revalidate against;
		// they are small, and a new binary must not show a stale script.
		h.Set("Cache-Control", "no-cache")
		switch {
		case r.URL.Path == "/":
			h.Set("Content-Type", "text/html; charset=utf-8")
			w.Write(index)
		case strings.HasSuffix(r.URL.Path, "/"):
			// No directory listings.
			http.NotFound(w, r)
		case !fs.ValidPath(strings.TrimPrefix(r.URL.Path, "/static/")):
			// The file server answers 500 for a name the embedded file
			// system cannot hold (not UTF-8, say): it is not a file here.
			http.NotFound(w, r)
		default:
			serve.ServeHTTP(w, r)
		}
	})
}
