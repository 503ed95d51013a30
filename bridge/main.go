// Command aigc-bridge is the REST bridge of AIGC Gateway: a grpc-gateway v2
// reverse proxy generated from protos/aigc/gateway/v1 that routes each
// service's google.api.http routes to that service's gRPC address.
//
// It forwards the caller's credentials (Authorization, the session cookie) and
// the request id as gRPC metadata, answers errors as google.rpc.Status JSON with
// the HTTP status of the gRPC code, and streams WatchInstance as
// newline-delimited JSON. It holds no state and no secret: every decision is the
// services'.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "aigc-bridge:", err)
		os.Exit(2)
	}
	logger := newLogger(cfg.LogFormat, os.Stderr)
	if err := run(cfg, logger); err != nil {
		logger.Error("bridge stopped", "error", err.Error())
		os.Exit(1)
	}
}

func run(cfg config, logger *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	backends, err := dialBackends(cfg)
	if err != nil {
		return err
	}
	defer backends.close()
	handler, err := newHandler(ctx, cfg, backends, logger)
	if err != nil {
		return err
	}

	listener, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		// No WriteTimeout: WatchInstance streams for as long as the client keeps it open.
		IdleTimeout: 120 * time.Second,
	}
	logger.Info("bridge listening", "address", listener.Addr().String(), "routes", backends.describe())
	// A line that scripts (the dev stack, the tests) wait for, with the bound port.
	fmt.Fprintf(os.Stdout, "listening on %s\n", listener.Addr().String())

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	logger.Info("shutting down", "grace", cfg.ShutdownGrace.String())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
