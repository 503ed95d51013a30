package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestIncomingHeaderForwardsOnlyCredentialsAndRequestID(t *testing.T) {
	for key, want := range map[string]string{"Cookie": "cookie", "X-Request-Id": "x-request-id"} {
		got, ok := incomingHeader(key)
		if !ok || got != want {
			t.Errorf("incomingHeader(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
	// Authorization is forwarded by grpc-gateway itself; returning it here would duplicate it.
	for _, key := range []string{"Authorization", "X-Aigc-Service-Token", "X-Aigc-Service-Name", "Grpc-Metadata-Cookie", "Host"} {
		if got, ok := incomingHeader(key); ok {
			t.Errorf("incomingHeader(%q) forwarded as %q", key, got)
		}
	}
}

func TestCrossSiteWrite(t *testing.T) {
	cases := []struct {
		name    string
		method  string
		headers map[string]string
		refused bool
	}{
		{"read with cookie", "GET", map[string]string{"Cookie": "s=1", "Origin": "https://evil.test"}, false},
		{"bearer write from anywhere", "POST", map[string]string{"Authorization": "Bearer x", "Cookie": "s=1", "Origin": "https://evil.test"}, false},
		{"cookie write, same origin", "POST", map[string]string{"Cookie": "s=1", "Origin": "https://dash.aigc.test"}, false},
		{"cookie write, no origin (not a browser)", "DELETE", map[string]string{"Cookie": "s=1"}, false},
		{"cookie write, trusted origin", "PATCH", map[string]string{"Cookie": "s=1", "Origin": "https://ui.aigc.test"}, false},
		{"cookie write, other origin", "POST", map[string]string{"Cookie": "s=1", "Origin": "https://evil.test"}, true},
		{"cookie write, null origin", "POST", map[string]string{"Cookie": "s=1", "Origin": "null"}, true},
		{"cookie write, cross-site fetch", "POST", map[string]string{"Cookie": "s=1", "Sec-Fetch-Site": "cross-site"}, true},
		{"cookie write, look-alike host", "POST", map[string]string{"Cookie": "s=1", "Origin": "https://dash.aigc.test.evil.test"}, true},
	}
	for _, c := range cases {
		r := httptest.NewRequest(c.method, "https://dash.aigc.test/v1/x", nil)
		for k, v := range c.headers {
			r.Header.Set(k, v)
		}
		got := crossSiteWrite(r, []string{"https://ui.aigc.test"})
		if (got != "") != c.refused {
			t.Errorf("%s: crossSiteWrite = %q, want refused=%v", c.name, got, c.refused)
		}
	}
}

func TestRetryAfterFromRetryInfo(t *testing.T) {
	st, _ := status.New(codes.ResourceExhausted, "slow down").WithDetails(
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	if got, ok := retryAfterSeconds(st.Err()); !ok || got != "2" {
		t.Fatalf("retryAfterSeconds = %q, %v; want 2 (rounded up)", got, ok)
	}
	if _, ok := retryAfterSeconds(status.Error(codes.NotFound, "x")); ok {
		t.Fatal("no RetryInfo must give no Retry-After")
	}
}

func TestTransportErrorsAreHidden(t *testing.T) {
	dial := status.Error(codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 10.0.0.7:50061"`)
	if msg := status.Convert(hideTransportError(dial)).Message(); strings.Contains(msg, "10.0.0.7") {
		t.Fatalf("address leaked: %q", msg)
	}
	own := status.Error(codes.Unavailable, "Kubernetes API unreachable")
	if hideTransportError(own) != own {
		t.Fatal("a service's own UNAVAILABLE must pass unchanged")
	}
}

func TestRequestIDKeptOrMade(t *testing.T) {
	var seen string
	h := withRequestID(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { seen = r.Header.Get(requestIDHeader) }))
	for _, in := range []string{"abc-123", "", strings.Repeat("x", 129), "has space"} {
		r := httptest.NewRequest("GET", "/", nil)
		if in != "" {
			r.Header.Set(requestIDHeader, in)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		echoed := w.Header().Get(requestIDHeader)
		if echoed != seen || !validRequestID(echoed) {
			t.Errorf("in %q: echoed %q, forwarded %q", in, echoed, seen)
		}
		if validRequestID(in) != (echoed == in) {
			t.Errorf("in %q: kept=%v, want kept=%v", in, echoed == in, validRequestID(in))
		}
	}
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"AIGC_BRIDGE_INSTANCE": "instance:50062", "AIGC_BRIDGE_TRUSTED_ORIGINS": "https://UI.aigc.test/, "}
	cfg, err := parseConfig([]string{"--template", "template:1"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Template != "template:1" || cfg.Instance != "instance:50062" || cfg.Audit != "template:1" {
		t.Fatalf("addresses: %+v", cfg)
	}
	if len(cfg.TrustedOrigins) != 1 || cfg.TrustedOrigins[0] != "https://ui.aigc.test" {
		t.Fatalf("origins: %v", cfg.TrustedOrigins)
	}
	_, err = parseConfig([]string{"--max-body-bytes", "12", "--log-format", "xml", "--shutdown-grace", "soon"}, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad values accepted")
	}
	for _, field := range []string{"max-body-bytes", "log-format", "shutdown-grace"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error does not name %s: %v", field, err)
		}
	}
}

// The whole handler against backends that do not exist: routing, error bodies
// and the transport-error rewrite, without any service.
func TestHandlerAnswersStatusJSONWhenServicesAreDown(t *testing.T) {
	cfg, err := parseConfig([]string{"--template", "127.0.0.1:1", "--instance", "127.0.0.1:1", "--auth", "127.0.0.1:1", "--usersync", "127.0.0.1:1"}, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	b, err := dialBackends(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	h, err := newHandler(context.Background(), cfg, b, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]int{"/v1/namespaces/default/templates": 503, "/v1/no/such/route": 404,
		"/readyz": 503, "/healthz": 200, "TRACE /v1/auth:whoami": 405, "PUT /v1/namespaces/default/templates": 405} {
		method := "GET"
		if m, p, ok := strings.Cut(path, " "); ok {
			method, path = m, p
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(method, path, nil))
		if w.Code != want {
			t.Errorf("GET %s = %d, want %d (%s)", path, w.Code, want, w.Body)
			continue
		}
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Errorf("GET %s: body is not JSON: %q", path, w.Body)
		}
		if strings.HasPrefix(path, "/v1/") && body["code"] == nil {
			t.Errorf("GET %s: not a google.rpc.Status: %s", path, w.Body)
		}
	}
}

func TestRateLimitPerClient(t *testing.T) {
	l := newLimiter(1, 2)
	clock := time.Unix(1000, 0)
	l.now = func() time.Time { return clock }
	alice := httptest.NewRequest("GET", "/v1/x", nil)
	alice.Header.Set("Authorization", "Bearer alice")
	bob := httptest.NewRequest("GET", "/v1/x", nil)
	bob.Header.Set("Authorization", "Bearer bob")
	for i := 0; i < 2; i++ {
		if ok, _ := l.allow(alice); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	ok, wait := l.allow(alice)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("third request: ok=%v wait=%v; want refused with a wait up to 1s", ok, wait)
	}
	if ok, _ := l.allow(bob); !ok {
		t.Fatal("another client must not be limited by alice")
	}
	clock = clock.Add(time.Second)
	if ok, _ := l.allow(alice); !ok {
		t.Fatal("a token must be back after a second")
	}

	h := l.middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, alice)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
		t.Fatalf("got %d Retry-After=%q", w.Code, w.Header().Get("Retry-After"))
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || body["code"] != float64(codes.ResourceExhausted) {
		t.Fatalf("body %s", w.Body)
	}
}
