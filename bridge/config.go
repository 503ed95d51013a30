package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// config is the bridge's whole configuration: flags, each with an environment
// variable that the Helm chart and the dev stack set instead.
type config struct {
	Listen        string
	Template      string
	Instance      string
	Auth          string
	UserSync      string
	Audit         string
	MaxBodyBytes  int64
	ShutdownGrace time.Duration
	LogFormat     string
	// RateLimit is requests per second per client (0: no limit), RateBurst the bucket size.
	RateLimit float64
	RateBurst int
	// TrustedOrigins are extra browser origins (scheme://host[:port]) allowed to
	// send cookie-authenticated writes; the bridge's own host always is.
	TrustedOrigins []string
	// StaticDir holds the dashboard's built assets, served at / beside /v1/ (empty: none).
	StaticDir string
}

// targetHelp is said of every backend flag: what a target may be (backends.go).
const targetHelp = ": host:port, dns:///name:port (every address the name resolves to, e.g. a headless Service's pods)," +
	" or a list host:port,host:port (also ipv4:host:port,...); calls are spread round_robin over the addresses"

// flagOutput is where -help prints.
var flagOutput io.Writer = os.Stdout

func parseConfig(args []string, getenv func(string) string) (config, error) {
	env := func(name, fallback string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return fallback
	}
	var cfg config
	var origins string
	fs := flag.NewFlagSet("aigc-bridge", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.Listen, "listen", env("AIGC_BRIDGE_LISTEN", "127.0.0.1:8080"), "host:port to serve HTTP on ($AIGC_BRIDGE_LISTEN)")
	fs.StringVar(&cfg.Template, "template", env("AIGC_BRIDGE_TEMPLATE", "127.0.0.1:50061"), "TemplateService gRPC target"+targetHelp+" ($AIGC_BRIDGE_TEMPLATE)")
	fs.StringVar(&cfg.Instance, "instance", env("AIGC_BRIDGE_INSTANCE", "127.0.0.1:50062"), "InstanceService gRPC target"+targetHelp+" ($AIGC_BRIDGE_INSTANCE)")
	fs.StringVar(&cfg.Auth, "auth", env("AIGC_BRIDGE_AUTH", "127.0.0.1:50063"), "AuthService gRPC target"+targetHelp+" ($AIGC_BRIDGE_AUTH)")
	fs.StringVar(&cfg.UserSync, "usersync", env("AIGC_BRIDGE_USERSYNC", "127.0.0.1:50064"), "UserSyncService gRPC target"+targetHelp+" ($AIGC_BRIDGE_USERSYNC)")
	fs.StringVar(&cfg.Audit, "audit", env("AIGC_BRIDGE_AUDIT", ""), "AuditService gRPC target; every server hosts it (default: the template target) ($AIGC_BRIDGE_AUDIT)")
	maxBody := fs.String("max-body-bytes", env("AIGC_BRIDGE_MAX_BODY_BYTES", "4194304"), "largest request body accepted ($AIGC_BRIDGE_MAX_BODY_BYTES)")
	grace := fs.String("shutdown-grace", env("AIGC_BRIDGE_SHUTDOWN_GRACE", "10s"), "how long SIGTERM waits for in-flight requests ($AIGC_BRIDGE_SHUTDOWN_GRACE)")
	fs.StringVar(&cfg.LogFormat, "log-format", env("AIGC_BRIDGE_LOG_FORMAT", "json"), "json or text ($AIGC_BRIDGE_LOG_FORMAT)")
	fs.StringVar(&origins, "trusted-origins", env("AIGC_BRIDGE_TRUSTED_ORIGINS", ""), "comma-separated extra origins allowed to send cookie-authenticated writes ($AIGC_BRIDGE_TRUSTED_ORIGINS)")
	limit := fs.String("rate-limit", env("AIGC_BRIDGE_RATE_LIMIT", "50"), "requests per second per client; 0 turns the limit off ($AIGC_BRIDGE_RATE_LIMIT)")
	burst := fs.String("rate-burst", env("AIGC_BRIDGE_RATE_BURST", "100"), "requests a client may send at once above the rate ($AIGC_BRIDGE_RATE_BURST)")
	fs.StringVar(&cfg.StaticDir, "static-dir", env("AIGC_BRIDGE_STATIC_DIR", ""), "the dashboard's built assets (dashboard/dist), served at / on the same origin as /v1/; empty serves none ($AIGC_BRIDGE_STATIC_DIR)")
	help := fs.Bool("help", false, "print this help")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if *help {
		fs.SetOutput(flagOutput)
		fs.PrintDefaults()
		return cfg, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	var problems []string
	n, err := strconv.ParseInt(*maxBody, 10, 64)
	if err != nil || n < 1024 {
		problems = append(problems, fmt.Sprintf("max-body-bytes: want an integer >= 1024, got %q", *maxBody))
	}
	cfg.MaxBodyBytes = n
	d, err := time.ParseDuration(*grace)
	if err != nil || d < 0 {
		problems = append(problems, fmt.Sprintf("shutdown-grace: want a duration such as 10s, got %q", *grace))
	}
	cfg.ShutdownGrace = d
	if cfg.RateLimit, err = strconv.ParseFloat(*limit, 64); err != nil || cfg.RateLimit < 0 {
		problems = append(problems, fmt.Sprintf("rate-limit: want a number >= 0, got %q", *limit))
	}
	if cfg.RateBurst, err = strconv.Atoi(*burst); err != nil || cfg.RateBurst < 1 {
		problems = append(problems, fmt.Sprintf("rate-burst: want an integer >= 1, got %q", *burst))
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		problems = append(problems, fmt.Sprintf("log-format: want json or text, got %q", cfg.LogFormat))
	}
	if cfg.Audit == "" {
		cfg.Audit = cfg.Template
	}
	for name, addr := range map[string]string{"template": cfg.Template, "instance": cfg.Instance, "auth": cfg.Auth, "usersync": cfg.UserSync, "audit": cfg.Audit} {
		if addr == "" {
			problems = append(problems, name+": address is empty")
		} else if list := splitAddresses(addr); len(list) > 1 || strings.HasPrefix(addr, "ipv4:") {
			for _, a := range list {
				if _, _, err := net.SplitHostPort(a); err != nil {
					problems = append(problems, fmt.Sprintf("%s: %q in the address list is not host:port", name, a))
				}
			}
		}
	}
	for _, o := range strings.Split(origins, ",") {
		if o = strings.TrimRight(strings.TrimSpace(o), "/"); o != "" {
			if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
				problems = append(problems, fmt.Sprintf("trusted-origins: %q is not scheme://host[:port]", o))
			}
			cfg.TrustedOrigins = append(cfg.TrustedOrigins, strings.ToLower(o))
		}
	}
	if len(problems) > 0 {
		return cfg, fmt.Errorf("invalid configuration:\n  %s", strings.Join(problems, "\n  "))
	}
	return cfg, nil
}

func newLogger(format string, out io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(out, nil))
	}
	return slog.New(slog.NewJSONHandler(out, nil))
}
