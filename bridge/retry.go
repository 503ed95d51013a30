package main

import (
	"encoding/json"
	"sort"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// The generated package registers the gateway's protos in protoregistry.
	_ "github.com/aigc-gateway/aigc-gateway/bridge/gen/aigc/gateway/v1"
)

// A replica killed with SIGKILL closes its connections without a GOAWAY: a call
// already written to it, or picked for it before round_robin saw the
// connection go, fails UNAVAILABLE although another replica is READY. grpc-go
// retries transparently only calls that never reached a server, so the bridge
// asks for a retry (gRPC's retryPolicy, A6) of the calls that are safe to run
// twice: every method its REST mapping reads with GET (AIP-131/132: no side
// effect) and the health check. Mutating calls are not retried here: one
// without a request_id could run twice; the client retries those with its
// request_id, which the services answer from the first outcome (AIP-155).
var readRetryPolicy = map[string]any{
	"maxAttempts":          4,
	"initialBackoff":       "0.05s",
	"maxBackoff":           "0.5s",
	"backoffMultiplier":    2,
	"retryableStatusCodes": []string{"UNAVAILABLE"},
}

// readMethods lists every method of the gateway's services whose
// google.api.http rule is a GET, as gRPC service-config names.
func readMethods() []map[string]string {
	var names []map[string]string
	protoregistry.GlobalFiles.RangeFilesByPackage("aigc.gateway.v1", func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Services().Len(); i++ {
			svc := f.Services().Get(i)
			for j := 0; j < svc.Methods().Len(); j++ {
				m := svc.Methods().Get(j)
				rule, _ := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
				if rule.GetGet() != "" {
					names = append(names, map[string]string{"service": string(svc.FullName()), "method": string(m.Name())})
				}
			}
		}
		return true
	})
	sort.Slice(names, func(a, b int) bool {
		return names[a]["service"]+"/"+names[a]["method"] < names[b]["service"]+"/"+names[b]["method"]
	})
	return append(names, map[string]string{"service": "grpc.health.v1.Health", "method": "Check"})
}

// serviceConfig is the service config of every backend connection: round_robin
// over the replicas (see backends) and the read retry above.
func serviceConfig() string {
	cfg := map[string]any{
		"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}},
		"methodConfig":        []any{map[string]any{"name": readMethods(), "retryPolicy": readRetryPolicy}},
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // a literal map of strings and numbers always marshals
	}
	return string(out)
}
