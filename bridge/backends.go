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
)

// backends holds one client connection per distinct gRPC address: in
// development every service may be one process on several ports, in a cluster
// each is its own Service; AuditService shares a connection with its host.
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
		conn, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
			// Pods start in any order: retry a down service within seconds, not
			// grpc-go's default of up to two minutes.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
				MinConnectTimeout: 5 * time.Second,
			}),
		)
		if err != nil {
			b.close()
			return nil, fmt.Errorf("backend %s: %w", addr, err)
		}
		b.conns[addr] = conn
	}
	return b, nil
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
