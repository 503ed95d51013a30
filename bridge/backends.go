package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// backends holds one client connection per distinct gRPC address: in
// development every service may be one process on several ports, in a cluster
// each is its own Service; AuditService shares a connection with its host.
//
// Every connection balances round_robin over the addresses its target resolves
// to: a subchannel (an HTTP/2 connection) per replica, calls spread over those
// that are READY, a killed replica's calls going to the others until it is back.
// grpc-go's default, pick_first, would keep one connection to one address, so
// behind a ClusterIP Service every call of a bridge would reach one pod; the Helm
// chart gives each service a headless Service and dns:///<name>:<port> instead.
// A comma-separated list (127.0.0.1:5001,127.0.0.1:5002) is a fixed address list
// for development and tests, served by a manual resolver.
type backends struct {
	conns  map[string]*grpc.ClientConn // by address
	routes map[string]string           // service name -> address
}

func dialBackends(cfg config) (*backends, error) {
	b := &backends{conns: map[string]*grpc.ClientConn{}, routes: map[string]string{
		"template": cfg.Template, "instance": cfg.Instance, "auth": cfg.Auth,
		"usersync": cfg.UserSync, "audit": cfg.Audit,
	}}
	for _, addr := range b.routes {
		if _, ok := b.conns[addr]; ok {
			continue
		}
		// Inside the cluster (and on loopback in development) the services speak
		// plaintext gRPC; the Ingress terminates TLS in front of the bridge.
		target, resolverOpts := dialTarget(addr)
		conn, err := grpc.NewClient(target, append(resolverOpts,
			grpc.WithDefaultServiceConfig(serviceConfig()),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
			// Pods start in any order: retry a down service within seconds, not
			// grpc-go's default of up to two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
		)...)
		if err != nil {
			b.close()
			return nil, fmt.Errorf("backend %s: %w", addr, err)
		}
		b.conns[addr] = conn
	}
	return b, nil
}

// listScheme names the manual resolver of a comma-separated address list; it is
// registered on its own connection only (grpc.WithResolvers), never globally.
const listScheme = "aigc-list"

// dialTarget is the gRPC target of one configured address and the options it
// needs: a comma-separated list (also written ipv4:a,b as the Python services
// take it; grpc-go has no ipv4 resolver) becomes a manual resolver holding those
// addresses; anything else (host:port, dns:///name:port) is dialled as it is,
// with grpc-go's own resolvers.
func dialTarget(addr string) (string, []grpc.DialOption) {
	list := splitAddresses(addr)
	if len(list) < 2 && !strings.HasPrefix(addr, "ipv4:") {
		return addr, nil
	}
	r := manual.NewBuilderWithScheme(listScheme)
	state := resolver.State{}
	for _, a := range list {
		state.Endpoints = append(state.Endpoints, resolver.Endpoint{Addresses: []resolver.Address{{Addr: a}}})
	}
	r.InitialState(state)
	return listScheme + ":///" + strings.Join(list, ","), []grpc.DialOption{grpc.WithResolvers(r)}
}

// splitAddresses reads a comma-separated address list (blanks around commas
// ignored, an ipv4: prefix taken off).
func splitAddresses(addr string) []string {
	var list []string
	for _, a := range strings.Split(strings.TrimPrefix(addr, "ipv4:"), ",") {
		if a = strings.TrimSpace(a); a != "" {
			list = append(list, a)
		}
	}
	return list
}

func (b *backends) conn(service string) *grpc.ClientConn { return b.conns[b.routes[service]] }

func (b *backends) close() {
	for _, c := range b.conns {
		_ = c.Close()
	}
}

func (b *backends) describe() string {
	parts := make([]string, 0, len(b.routes))
	for name, addr := range b.routes {
		parts = append(parts, name+"="+addr)
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// ready asks every backend's gRPC health service; it returns the addresses that
// are not SERVING (empty: ready).
func (b *backends) ready(ctx context.Context) []string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		missing []string
	)
	for addr, conn := range b.conns {
		wg.Add(1)
		go func(addr string, conn *grpc.ClientConn) {
			defer wg.Done()
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				mu.Lock()
				missing = append(missing, addr)
				mu.Unlock()
			}
		}(addr, conn)
	}
	wg.Wait()
	sort.Strings(missing)
	return missing
}
