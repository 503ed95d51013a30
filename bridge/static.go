package main

// The dashboard's built assets (dashboard/dist), served by the bridge so that the
// page and the REST API share one origin: the browser sends the session cookie
// with every API call, and the cross-site guard sees the page's own host in
// Origin. Files are read once at start, gzip-compressed once, and answered from
// memory; paths without a file extension (client-side routes such as /admin)
// answer index.html.

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// The page loads nothing from anywhere else (no CDN): only its own origin.
const dashboardCSP = "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"

type staticFile struct {
	body, gzipped []byte
	contentType   string
	etag          string
	immutable     bool
}

type staticSite struct {
	files map[string]*staticFile // by URL path ("/index.html", "/assets/…")
}

func loadStatic(dir string) (*staticSite, error) {
	site := &staticSite{files: map[string]*staticFile{}}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return err // dot files are the build's own bookkeeping (scripts/setup.d/60-dashboard.sh)
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		body, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		urlPath := "/" + filepath.ToSlash(rel)
		sum := sha256.Sum256(body)
		f := &staticFile{body: body, etag: `"` + hex.EncodeToString(sum[:8]) + `"`,
			// Vite names every built asset by a hash of its content: it never changes.
			immutable: strings.HasPrefix(urlPath, "/assets/")}
		f.contentType = mime.TypeByExtension(path.Ext(urlPath))
		if f.contentType == "" {
			f.contentType = http.DetectContentType(body)
		}
		if compressible(f.contentType) && len(body) > 512 {
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
			_, _ = zw.Write(body)
			_ = zw.Close()
			if buf.Len() < len(body) {
				f.gzipped = buf.Bytes()
			}
		}
		site.files[urlPath] = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	if site.files["/index.html"] == nil {
		return nil, fmt.Errorf("static-dir %s has no index.html (build the dashboard: cd dashboard && npm ci && npm run build)", dir)
	}
	return site, nil
}

func compressible(contentType string) bool {
	for _, prefix := range []string{"text/", "application/javascript", "application/json", "image/svg+xml"} {
		if strings.HasPrefix(contentType, prefix) {
			return true
		}
	}
	return false
}

// withStatic answers GET and HEAD outside /v1/ from the site; everything else
// goes to api (whose routing errors stay google.rpc.Status JSON).
func withStatic(site *staticSite, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			api.ServeHTTP(w, r)
			return
		}
		f := site.files[r.URL.Path]
		if f == nil && r.URL.Path == "/" {
			f = site.files["/index.html"]
		}
		if f == nil && path.Ext(r.URL.Path) == "" {
			f = site.files["/index.html"] // a client-side route
		}
		if f == nil {
			http.Error(w, "not found", http.StatusNotFound)
			return
		}
		site.serve(w, r, f)
	})
}

func (s *staticSite) serve(w http.ResponseWriter, r *http.Request, f *staticFile) {
	h := w.Header()
	h.Set("Content-Type", f.contentType)
	h.Set("ETag", f.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Vary", "Accept-Encoding")
	if f.immutable {
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	if strings.HasPrefix(f.contentType, "text/html") {
		h.Set("Content-Security-Policy", dashboardCSP)
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
	}
	if match := r.Header.Get("If-None-Match"); match != "" && strings.Contains(match, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := f.body
	if f.gzipped != nil && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		body = f.gzipped
		h.Set("Content-Encoding", "gzip")
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}

func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		q := strings.TrimPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		return q == params || (q != "0" && q != "0.0" && q != "0.00" && q != "0.000")
	}
	return false
}
