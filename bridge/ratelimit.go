package main

import (
	"crypto/sha256"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// limiter is a token bucket per client, so that one client's flood (a script gone
// wrong, a credential-guessing loop) cannot take the services from everyone else.
// A client is its credential (a hash of the Authorization header or the session
// cookie) or, without one, its address. Over the limit: 429 with a
// RESOURCE_EXHAUSTED google.rpc.Status, RetryInfo and Retry-After.
type limiter struct {
	perSecond rate.Limit
	burst     int
	mu        sync.Mutex
	clients   map[[32]byte]*client
	lastSweep time.Time
	now       func() time.Time
}

type client struct {
	bucket   *rate.Limiter
	lastSeen time.Time
}

const idleClient = 10 * time.Minute

func newLimiter(perSecond float64, burst int) *limiter {
	return &limiter{perSecond: rate.Limit(perSecond), burst: burst, clients: map[[32]byte]*client{}, now: time.Now}
}

// clientKey: the credential when there is one (behind the Ingress every request comes
// from the controller's address), else the remote address.
func clientKey(r *http.Request) [32]byte {
	if auth := r.Header.Get("Authorization"); auth != "" {
		return sha256.Sum256([]byte("authorization\x00" + auth))
	}
	if cookie := r.Header.Get("Cookie"); cookie != "" {
		return sha256.Sum256([]byte("cookie\x00" + cookie))
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return sha256.Sum256([]byte("address\x00" + host))
}

// allow takes a token for the request's client; when none is left it returns how
// long until one is.
func (l *limiter) allow(r *http.Request) (bool, time.Duration) {
	key := clientKey(r)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) > time.Minute {
		for k, c := range l.clients {
			if now.Sub(c.lastSeen) > idleClient {
				delete(l.clients, k)
			}
		}
		l.lastSweep = now
	}
	c, ok := l.clients[key]
	if !ok {
		c = &client{bucket: rate.NewLimiter(l.perSecond, l.burst)}
		l.clients[key] = c
	}
	c.lastSeen = now
	reservation := c.bucket.ReserveN(now, 1)
	if !reservation.OK() {
		return false, time.Second
	}
	if delay := reservation.DelayFrom(now); delay > 0 {
		reservation.CancelAt(now)
		return false, delay
	}
	return true, 0
}

func (l *limiter) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok, wait := l.allow(r)
		if ok {
			next.ServeHTTP(w, r)
			return
		}
		st, err := status.New(codes.ResourceExhausted, "too many requests from this client; slow down").
			WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(wait)})
		if err != nil {
			st = status.New(codes.ResourceExhausted, "too many requests from this client; slow down")
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Max(1, math.Ceil(wait.Seconds())))))
		writeStatus(w, st)
	})
}
