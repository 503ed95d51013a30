package main

import (
	"crypto/rand"
	"encoding/hex"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

const requestIDHeader = "X-Request-Id"

// withRequestID keeps a well-formed client request id (so a client can follow
// its call through the logs and the audit log) or makes one, and echoes it.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(requestIDHeader)
		if !validRequestID(id) {
			id = newRequestID()
			r.Header.Set(requestIDHeader, id)
		}
		w.Header().Set(requestIDHeader, id)
		next.ServeHTTP(w, r)
	})
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, c := range id {
		if c < 0x21 || c > 0x7e {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// guard refuses what the services cannot see for themselves: oversized bodies,
// and cross-site writes that ride on the browser's session cookie (CSRF). A call
// with an Authorization header is not at risk: a browser never adds one by itself.
func guard(cfg config, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, cfg.MaxBodyBytes)
		}
		if reason := crossSiteWrite(r, cfg.TrustedOrigins); reason != "" {
			writeStatus(w, status.New(codes.PermissionDenied, reason))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func crossSiteWrite(r *http.Request, trusted []string) string {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return ""
	}
	if r.Header.Get("Authorization") != "" || r.Header.Get("Cookie") == "" {
		return ""
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" {
		return "cross-site request with a session cookie refused"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		// Browsers send Origin on every cross-origin POST, PATCH and DELETE (and
		// Sec-Fetch-Site, checked above): without either it is no browser's cross-site write.
		return ""
	}
	u, err := url.Parse(origin)
	if err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) {
		return ""
	}
	normalized := strings.ToLower(strings.TrimRight(origin, "/"))
	for _, t := range trusted {
		if normalized == t {
			return ""
		}
	}
	return "request from origin " + strconv.Quote(origin) + " with a session cookie refused"
}

// writeStatus answers like the generated routes do: google.rpc.Status JSON.
func writeStatus(w http.ResponseWriter, st *status.Status) {
	body, err := protojson.Marshal(st.Proto())
	if err != nil {
		body = []byte(`{"code":13,"message":"internal error"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus(st.Code()))
	_, _ = w.Write(body)
}

func httpStatus(c codes.Code) int {
	switch c {
	case codes.Unimplemented: // only the bridge's own "no such method on this path"
		return http.StatusMethodNotAllowed
	case codes.NotFound:
		return http.StatusNotFound
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.InvalidArgument:
		return http.StatusBadRequest
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// retryAfterSeconds turns a google.rpc.RetryInfo detail into a Retry-After value
// (whole seconds, rounded up; at least 1).
func retryAfterSeconds(err error) (string, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return "", false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			secs := math.Ceil(info.GetRetryDelay().AsDuration().Seconds())
			if secs < 1 {
				secs = 1
			}
			return strconv.FormatInt(int64(secs), 10), true
		}
	}
	return "", false
}
