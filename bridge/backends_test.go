package main

import (
	"context"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gatewayv1 "github.com/aigc-gateway/aigc-gateway/bridge/gen/aigc/gateway/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// replica is a gRPC server with the health service that counts the calls it answers.
type replica struct {
	addr   string
	server *grpc.Server
	calls  atomic.Int64
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{addr: lis.Addr().String()}
	r.server = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		r.calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(r.server, health.NewServer())
	go func() { _ = r.server.Serve(lis) }()
	t.Cleanup(r.server.Stop)
	return r
}

func TestDialTargetKeepsSingleTargetsAndListsAList(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:50061", "dns:///gw-template-grpc.ns.svc:50051"} {
		if target, opts := dialTarget(addr); target != addr || opts != nil {
			t.Errorf("dialTarget(%q) = %q, %d options; want it unchanged", addr, target, len(opts))
		}
	}
	for _, addr := range []string{" 127.0.0.1:1, 127.0.0.1:2 ,", "ipv4:127.0.0.1:1,127.0.0.1:2"} {
		target, opts := dialTarget(addr)
		if target != "aigc-list:///127.0.0.1:1,127.0.0.1:2" || len(opts) != 1 {
			t.Errorf("dialTarget(%q) = %q, %d options", addr, target, len(opts))
		}
	}
}

func TestConfigRefusesAListEntryThatIsNotHostPort(t *testing.T) {
	_, err := parseConfig([]string{"-instance", "127.0.0.1:1,nope"}, func(string) string { return "" })
	if err == nil || !strings.Contains(err.Error(), `instance: "nope" in the address list is not host:port`) {
		t.Fatalf("err = %v", err)
	}
	for _, list := range []string{"127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1"} {
		if _, err := parseConfig([]string{"-instance", list}, func(string) string { return "" }); err != nil {
			t.Errorf("%s: %v", list, err)
		}
	}
}

// Calls through a backend named by a two-address list reach both replicas; with
// one of them stopped, every call is answered by the other.
func TestBackendListSpreadsCallsAndSurvivesAStoppedReplica(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	list := a.addr + "," + b.addr
	bk, err := dialBackends(config{Template: list, Instance: list, Auth: list, UserSync: list, Audit: list})
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	if len(bk.conns) != 1 {
		t.Fatalf("%d connections for one address list", len(bk.conns))
	}
	client := healthpb.NewHealthClient(bk.conn("template"))
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	// round_robin sends the first call once a subchannel is READY; wait for both
	// to be, so that the spread is visible in a few calls.
	for i := 0; i < 100 && (a.calls.Load() == 0 || b.calls.Load() == 0); i++ {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("calls: %s %d, %s %d", a.addr, a.calls.Load(), b.addr, b.calls.Load())
	if a.calls.Load() == 0 || b.calls.Load() == 0 {
		t.Fatalf("calls did not reach both replicas: %d, %d", a.calls.Load(), b.calls.Load())
	}
	a.server.Stop()
	before := b.calls.Load()
	for i := 0; i < 20; i++ {
		if err := call(); err != nil {
			t.Fatalf("call %d after a replica stopped: %v", i, err)
		}
	}
	if got := b.calls.Load() - before; got != 20 {
		t.Fatalf("the remaining replica answered %d of 20 calls", got)
	}
}

// A replica stopped and started again on its address is used again: with the
// other one stopped afterwards, calls are answered by the restarted one.
func TestBackendListReconnectsToARestartedReplica(t *testing.T) {
	a, b := startReplica(t), startReplica(t)
	bk, err := dialBackends(config{Template: a.addr + "," + b.addr, Instance: "127.0.0.1:1", Auth: "127.0.0.1:1", UserSync: "127.0.0.1:1", Audit: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	client := healthpb.NewHealthClient(bk.conn("template"))
	call := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	for i := 0; i < 10; i++ {
		if err := call(); err != nil {
			t.Fatal(err)
		}
	}
	a.server.Stop()
	for i := 0; i < 5; i++ {
		if err := call(); err != nil {
			t.Fatalf("call %d with a stopped: %v", i, err)
		}
	}
	// a comes back on the same address.
	lis, err := net.Listen("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	again := &replica{addr: a.addr}
	again.server = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		again.calls.Add(1)
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(again.server, health.NewServer())
	go func() { _ = again.server.Serve(lis) }()
	defer again.server.Stop()
	b.server.Stop()
	var failed int
	deadline := time.Now().Add(10 * time.Second)
	for again.calls.Load() < 5 && time.Now().Before(deadline) {
		if err := call(); err != nil {
			failed++
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("restarted replica answered %d calls; %d calls failed while it was reconnected", again.calls.Load(), failed)
	if again.calls.Load() < 5 {
		t.Fatalf("the restarted replica was not used again (%d calls answered, %d failed)", again.calls.Load(), failed)
	}
}

// The read retry is asked for the GET-mapped methods and the health check,
// never for a mutating method.
func TestServiceConfigRetriesReadsOnly(t *testing.T) {
	names := map[string]bool{}
	for _, n := range readMethods() {
		names[n["service"]+"/"+n["method"]] = true
	}
	for _, want := range []string{"aigc.gateway.v1.InstanceService/GetInstance", "aigc.gateway.v1.InstanceService/ListInstances",
		"aigc.gateway.v1.TemplateService/ListTemplates", "grpc.health.v1.Health/Check"} {
		if !names[want] {
			t.Errorf("%s is not retried", want)
		}
	}
	for _, never := range []string{"aigc.gateway.v1.InstanceService/CreateInstance", "aigc.gateway.v1.InstanceService/DeleteInstance",
		"aigc.gateway.v1.TemplateService/UpdateTemplate"} {
		if names[never] {
			t.Errorf("%s is retried", never)
		}
	}
}

// Against a replica that answers every call UNAVAILABLE (what a client meets on
// a connection its killed server dropped), a read is attempted four times and a
// mutation once.
func TestBackendRetriesAnUnavailableReadButNotAMutation(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var attempts sync.Map // full method -> *atomic.Int64
	server := grpc.NewServer(grpc.UnaryInterceptor(func(_ context.Context, _ any, info *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
		n, _ := attempts.LoadOrStore(info.FullMethod, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		return nil, status.Error(codes.Unavailable, "going away")
	}))
	gatewayv1.RegisterInstanceServiceServer(server, gatewayv1.UnimplementedInstanceServiceServer{})
	go func() { _ = server.Serve(lis) }()
	defer server.Stop()
	addr := lis.Addr().String()
	bk, err := dialBackends(config{Template: addr, Instance: addr, Auth: addr, UserSync: addr, Audit: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer bk.close()
	client := gatewayv1.NewInstanceServiceClient(bk.conn("instance"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.GetInstance(ctx, &gatewayv1.GetInstanceRequest{Name: "x"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("GetInstance: %v", err)
	}
	if _, err := client.DeleteInstance(ctx, &gatewayv1.DeleteInstanceRequest{Name: "x"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("DeleteInstance: %v", err)
	}
	count := func(method string) int64 {
		n, ok := attempts.Load("/aigc.gateway.v1.InstanceService/" + method)
		if !ok {
			return 0
		}
		return n.(*atomic.Int64).Load()
	}
	if got := count("GetInstance"); got != 4 {
		t.Errorf("GetInstance was attempted %d times, want 4", got)
	}
	if got := count("DeleteInstance"); got != 1 {
		t.Errorf("DeleteInstance was attempted %d times, want 1", got)
	}
}
