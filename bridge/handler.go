package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	gatewayv1 "github.com/aigc-gateway/aigc-gateway/bridge/gen/aigc/gateway/v1"
)

// newHandler builds the whole HTTP surface: the generated routes of the five
// services wrapped in the bridge's middleware, plus /healthz and /readyz, and
// the dashboard's assets when cfg.StaticDir is set (see static.go).
func newHandler(ctx context.Context, cfg config, b *backends, logger *slog.Logger) (http.Handler, error) {
	mux := newGatewayMux()
	register := []struct {
		service string
		fn      func(context.Context, *runtime.ServeMux) error
	}{
		{"template", func(ctx context.Context, m *runtime.ServeMux) error {
			return gatewayv1.RegisterTemplateServiceHandler(ctx, m, b.conn("template"))
		}},
		{"instance", func(ctx context.Context, m *runtime.ServeMux) error {
			return gatewayv1.RegisterInstanceServiceHandler(ctx, m, b.conn("instance"))
		}},
		{"auth", func(ctx context.Context, m *runtime.ServeMux) error {
			return gatewayv1.RegisterAuthServiceHandler(ctx, m, b.conn("auth"))
		}},
		{"usersync", func(ctx context.Context, m *runtime.ServeMux) error {
			return gatewayv1.RegisterUserSyncServiceHandler(ctx, m, b.conn("usersync"))
		}},
		{"audit", func(ctx context.Context, m *runtime.ServeMux) error {
			return gatewayv1.RegisterAuditServiceHandler(ctx, m, b.conn("audit"))
		}},
	}
	for _, r := range register {
		if err := r.fn(ctx, mux); err != nil {
			return nil, err
		}
	}

	root := http.NewServeMux()
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"SERVING"}`))
	})
	root.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		missing := b.ready(r.Context())
		w.Header().Set("Content-Type", "application/json")
		if len(missing) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]any{"status": "NOT_SERVING", "unavailable": missing})
			return
		}
		_, _ = w.Write([]byte(`{"status":"SERVING"}`))
	})
	var api http.Handler = guard(cfg, mux)
	if cfg.RateLimit > 0 {
		api = newLimiter(cfg.RateLimit, cfg.RateBurst).middleware(api)
	}
	if cfg.StaticDir != "" {
		site, err := loadStatic(cfg.StaticDir)
		if err != nil {
			return nil, err
		}
		api = withStatic(site, api)
	}
	root.Handle("/", api)
	return withRequestID(accessLog(logger, root)), nil
}

// newGatewayMux is the grpc-gateway mux with the bridge's conventions.
func newGatewayMux() *runtime.ServeMux {
	jsonpb := &runtime.JSONPb{
		// Scalars are always present (`"usable": false`, `"liveInstanceCount": 0`), so
		// clients need not know proto3 defaults; unset messages are left out rather
		// than written as null, which the OpenAPI schema does not allow.
		MarshalOptions: protojson.MarshalOptions{EmitDefaultValues: true},
		// Newer clients may send fields an older server does not know.
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
	}
	return runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &ndjsonStreams{JSONPb: jsonpb}),
		runtime.WithIncomingHeaderMatcher(incomingHeader),
		runtime.WithOutgoingHeaderMatcher(outgoingHeader),
		runtime.WithOutgoingTrailerMatcher(outgoingHeader),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
	)
}

// ndjsonStreams marks server streams (WatchInstance) as newline-delimited JSON:
// one {"result": …} object per line, and {"error": Status} as the last line when
// the stream fails.
type ndjsonStreams struct{ *runtime.JSONPb }

func (*ndjsonStreams) StreamContentType(any) string { return "application/x-ndjson" }

// incomingHeader decides which HTTP request headers reach the services as gRPC
// metadata. Authorization is always forwarded by grpc-gateway itself. Nothing
// else is: in particular no client can set the gateway's service-token metadata.
func incomingHeader(key string) (string, bool) {
	switch strings.ToLower(key) {
	case "cookie":
		return "cookie", true
	case "x-request-id":
		return "x-request-id", true
	}
	return "", false
}

// outgoingHeader: the request id travels back as X-Request-Id (set by
// withRequestID); other service metadata stays inside.
func outgoingHeader(string) (string, bool) { return "", false }

// errorHandler is grpc-gateway's (google.rpc.Status JSON, HTTP status from the
// gRPC code) plus Retry-After when the status carries RetryInfo.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	err = hideTransportError(err)
	if seconds, ok := retryAfterSeconds(err); ok {
		w.Header().Set("Retry-After", seconds)
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, &bearerChallenge{ResponseWriter: w}, r, err)
}

// routingErrorHandler: a path the API does not have is 404 NOT_FOUND; a method a
// path does not have is 405 (grpc-gateway's default answers 501, a server error,
// for what is the client's mistake).
func routingErrorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
	switch httpStatus {
	case http.StatusMethodNotAllowed:
		writeStatus(w, status.New(codes.Unimplemented, r.Method+" is not allowed on "+r.URL.Path))
	case http.StatusNotFound:
		writeStatus(w, status.New(codes.NotFound, "no API route "+r.Method+" "+r.URL.Path))
	default:
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, httpStatus)
	}
}

// hideTransportError keeps the bridge's view of the cluster (addresses, dial
// errors) out of responses: a service that cannot be reached is just unavailable.
func hideTransportError(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable || len(st.Details()) > 0 {
		return err
	}
	if msg := st.Message(); strings.Contains(msg, "connection error") || strings.Contains(msg, "transport:") {
		return status.Error(codes.Unavailable, "the service is unavailable; retry later")
	}
	return err
}

// bearerChallenge replaces grpc-gateway's WWW-Authenticate (the error message)
// with a well-formed Bearer challenge (RFC 6750).
type bearerChallenge struct{ http.ResponseWriter }

func (b *bearerChallenge) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		b.Header().Set("WWW-Authenticate", `Bearer realm="aigc-gateway"`)
	}
	b.ResponseWriter.WriteHeader(code)
}

func (b *bearerChallenge) Unwrap() http.ResponseWriter { return b.ResponseWriter }

// accessLog writes one line per request; never headers, bodies or query strings,
// which may carry credentials.
func accessLog(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			return
		}
		logger.Info("handled", "method", r.Method, "path", r.URL.Path, "status", rec.status,
			"ms", float64(time.Since(started).Microseconds())/1000, "request_id", r.Header.Get(requestIDHeader))
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
