package main

import (
	"compress/gzip"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testSite(t *testing.T) http.Handler {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "assets"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("index.html", "<!doctype html><title>dashboard</title>")
	write("assets/index-abc123.js", strings.Repeat("console.log('dashboard');\n", 200))
	site, err := loadStatic(dir)
	if err != nil {
		t.Fatal(err)
	}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-From", "api")
		w.WriteHeader(http.StatusTeapot)
	})
	return withStatic(site, api)
}

func get(h http.Handler, method, path string, headers map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, nil)
	for k, v := range headers {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestStaticServesIndexForRootAndClientRoutes(t *testing.T) {
	h := testSite(t)
	for _, p := range []string{"/", "/index.html", "/admin", "/admin/templates"} {
		w := get(h, http.MethodGet, p, nil)
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), "<title>dashboard</title>") {
			t.Fatalf("GET %s = %d %q; want index.html", p, w.Code, w.Body.String())
		}
		if cc := w.Header().Get("Cache-Control"); cc != "no-cache" {
			t.Errorf("GET %s Cache-Control = %q; want no-cache (a new build must show at once)", p, cc)
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s CSP = %q", p, csp)
		}
	}
}

func TestStaticAssetsAreGzippedImmutableAndRevalidated(t *testing.T) {
	h := testSite(t)
	w := get(h, http.MethodGet, "/assets/index-abc123.js", map[string]string{"Accept-Encoding": "gzip, br"})
	if w.Code != http.StatusOK || w.Header().Get("Content-Encoding") != "gzip" {
		t.Fatalf("status %d, encoding %q; want 200 gzip", w.Code, w.Header().Get("Content-Encoding"))
	}
	if !strings.Contains(w.Header().Get("Cache-Control"), "immutable") || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/javascript") {
		t.Errorf("headers %v", w.Header())
	}
	zr, err := gzip.NewReader(w.Body)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(zr)
	if len(body) != 26*200 {
		t.Errorf("gunzipped %d bytes; want %d", len(body), 26*200)
	}
	plain := get(h, http.MethodGet, "/assets/index-abc123.js", map[string]string{"Accept-Encoding": "gzip;q=0"})
	if plain.Header().Get("Content-Encoding") != "" || plain.Body.Len() != 26*200 {
		t.Errorf("gzip;q=0 still got %q, %d bytes", plain.Header().Get("Content-Encoding"), plain.Body.Len())
	}
	again := get(h, http.MethodGet, "/assets/index-abc123.js", map[string]string{"If-None-Match": w.Header().Get("ETag")})
	if again.Code != http.StatusNotModified {
		t.Errorf("If-None-Match: %d; want 304", again.Code)
	}
}

func TestStaticLeavesTheAPIAndWritesToTheAPI(t *testing.T) {
	h := testSite(t)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v1/namespaces/-/templates"}, {http.MethodPost, "/"}, {http.MethodDelete, "/admin"},
	} {
		if w := get(h, c.method, c.path, nil); w.Header().Get("X-From") != "api" {
			t.Errorf("%s %s was not the API's", c.method, c.path)
		}
	}
	if w := get(h, http.MethodGet, "/assets/missing.js", nil); w.Code != http.StatusNotFound {
		t.Errorf("a missing asset: %d; want 404 (not index.html)", w.Code)
	}
}

func TestStaticDirWithoutIndexIsRefused(t *testing.T) {
	if _, err := loadStatic(t.TempDir()); err == nil || !strings.Contains(err.Error(), "index.html") {
		t.Fatalf("err = %v; want one naming index.html", err)
	}
}
