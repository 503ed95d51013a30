"""The one-command development stack behind `scripts/dev`.

Starts, in order: the Kubernetes test bed (testbed/testbed, cached build; reused when it is
already up), PostgreSQL (`--postgres`) or the embedded SQLite default, oidc-provider as the
development identity provider with its login page, the four services in one process, the
REST bridge serving the dashboard, nginx as the dashboard host (see .dashboard); signs the demo
users in, applies the five sample templates, prints the URLs, the
users and a CLI example, then waits. Ctrl-C stops everything it started, in reverse order.

State lives in ./var/dev (gitignored): the configuration, logs, tokens and secrets of the run
(random per machine, file mode 600; nothing here is a production secret).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import dashboard
from .local import Ports, load_keys, write_private

# The checkout this package lives in (scripts/dev runs from it).
ROOT = Path(__file__).resolve().parents[1]
TOKEN_REFRESH_SECONDS = 45 * 60  # oidc-provider's ID tokens live an hour
CLI_CLIENT = "aigcctl-dev"
CLI_REDIRECT = "https://aigcctl.invalid/callback"  # never visited: the token is read from the redirect
USERS = {"admin": ["admin"], "alice": [], "bob": []}


class StackError(Exception):
    pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Stack:
    opts: argparse.Namespace
    state: Path
    ports: Ports
    children: list[Child] = field(default_factory=list)
    cleanups: list[tuple[str, list[str]]] = field(default_factory=list)
    issuer: str = ""
    kubeconfig: str = ""

    # -- processes --------------------------------------------------------------

    def say(self, text: str) -> None:
        print(f"[dev] {text}", flush=True)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.state / "logs" / f"{name}.log"
        handle = log.open("ab")
        # A session of its own: Ctrl-C reaches only this orchestrator, which stops the
        # children in order (bridge before services before the identity provider).
        process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, **(env or {})}, cwd=ROOT, start_new_session=True)
        handle.close()
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if child.process.poll() is not None:
                tail = child.log.read_text(errors="replace").splitlines()[-25:]
                raise StackError(f"{child.name} exited with {child.process.returncode}; last lines of {child.log}:\n"
                                 + "\n".join(tail))

    def wait_for(self, what: str, probe: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                result = probe()
                if result:
                    return result
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{what} was not ready within {timeout:.0f}s")
            time.sleep(0.3)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                self.say(f"stopping {child.name}")
                try:
                    os.killpg(child.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for child in reversed(self.children):
            try:
                child.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait()
        for what, command in reversed(self.cleanups):
            self.say(f"stopping {what}")
            subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- parts --------------------------------------------------------------------

    def testbed(self) -> None:
        cli = str(ROOT / "testbed" / "testbed")
        if subprocess.run([cli, "status"], cwd=ROOT, capture_output=True).returncode != 0:
            self.say("building (cached) and starting the Kubernetes test bed; a cold build takes a while, "
                     f"see {os.path.relpath(self.state / 'logs' / 'testbed.log')}")
            with (self.state / "logs" / "testbed.log").open("ab") as log:
                for step in ("build", "up"):
                    if subprocess.run([cli, step], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                        raise StackError(f"testbed {step} failed: see {log.name}")
            if not self.opts.keep_testbed:
                self.cleanups.append(("the test bed", [cli, "down"]))
        else:
            self.say("the Kubernetes test bed is already up: using it (and leaving it up)")
        env = dict(line.split("=", 1) for line in subprocess.run([cli, "env"], cwd=ROOT, capture_output=True,
                                                                  text=True).stdout.splitlines() if "=" in line)
        self.kubeconfig = env["KUBECONFIG"]
        kubectl = env.get("AIGC_TESTBED_KUBECTL") or shutil.which("kubectl") or "kubectl"
        if subprocess.run([kubectl, "--kubeconfig", self.kubeconfig, "get", "namespace", self.opts.namespace],
                          capture_output=True).returncode:
            subprocess.run([kubectl, "--kubeconfig", self.kubeconfig, "create", "namespace", self.opts.namespace],
                           capture_output=True, check=True)

    def postgres(self) -> str:
        directory = str(self.state / "postgres")
        result = subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "start", directory], cwd=ROOT,
                                capture_output=True, text=True)
        if result.returncode:
            raise StackError(f"PostgreSQL did not start:\n{result.stderr}")
        self.cleanups.append(("PostgreSQL", [str(ROOT / "scripts" / "postgres.sh"), "stop", directory]))
        return result.stdout.strip().removeprefix("DATABASE_URL=")

    def identity_provider(self, client_secret: str) -> None:
        server = ROOT / "tools" / "oidc-provider" / "server.mjs"
        if not (server.parent / "node_modules" / "oidc-provider").is_dir():
            raise StackError("tools/oidc-provider is not installed: run scripts/setup.d/40-oidc-provider.sh")
        public = self.dashboard_url
        config = {
            "host": "127.0.0.1", "port": self.ports.idp,
            "clients": [
                {"client_id": "aigc-gateway", "client_secret": client_secret,
                 "redirect_uris": [f"{public}/sign-in-callback"], "post_logout_redirect_uris": [f"{public}/"]},
                # The CLI's development tokens: ID tokens (with the roles claim) from the implicit flow.
                {"client_id": CLI_CLIENT, "token_endpoint_auth_method": "none", "response_types": ["id_token"],
                 "grant_types": ["implicit"], "redirect_uris": [CLI_REDIRECT]},
            ],
            "accounts": {user: {"roles": roles, "email": f"{user}@{self.opts.domain}", "name": user.title()}
                         for user, roles in USERS.items()},
        }
        path = self.state / "oidc-provider.json"
        write_private(path, json.dumps(config, indent=2))
        child = self.spawn("oidc-provider", ["node", str(server), "--config", str(path)])

        def started() -> str:
            for line in child.log.read_text(errors="replace").splitlines():
                if line.startswith("{") and '"issuer"' in line:
                    return json.loads(line)["issuer"]
            return ""

        self.issuer = self.wait_for("the identity provider", started, 30)

    def gateway(self, database_url: str, keys: dict[str, str]) -> Path:
        p, domain = self.ports, self.opts.domain
        config: dict[str, Any] = {
            "domain": domain,
            "data_dir": str(self.state),
            "namespaces": [self.opts.namespace],
            "oidc": {"issuer": self.issuer, "audience": [CLI_CLIENT], "client_id": "aigc-gateway"},
            "servers": {**{name: {"listen": f"127.0.0.1:{getattr(p, name)}"}
                           for name in ("template", "instance", "auth", "usersync")},
                        "metrics_listen": f"127.0.0.1:{p.metrics}"},
            "kubernetes": {"kubeconfig": self.kubeconfig or str(self.state / "no-kubernetes")},
            "logging": {"level": "INFO", "json": False},
            "auth": {"http_listen": f"127.0.0.1:{p.auth_http}", "public_url": self.dashboard_url,
                     "cookie_secure": False, "allow_http_redirects": True, "http_workers": 0},
            "usersync": {"http_listen": f"127.0.0.1:{p.usersync_http}"},
            # What instance ingresses must carry: the samples' https://dashboard.<domain>/auth, the URL an
            # ingress controller in front of this stack would serve (there is none in development).
            "template": {"auth_url": f"https://dashboard.{domain}/auth",
                         "auth_signin_url": f"https://dashboard.{domain}/sign-in"},
        }
        path = self.state / "config.yaml"
        write_private(path, "# Written by scripts/dev on every start; secrets come from the environment.\n"
                      + yaml.safe_dump(config, sort_keys=False))
        # Secrets by environment, never in the file (the same way the Helm chart passes them).
        env = {"AIGC_GATEWAY__SERVICE_IDENTITY__TOKEN": keys["service_token"],
               "AIGC_GATEWAY__AUTH__SESSION_KEYS": json.dumps([keys["session_key"]]),
               "AIGC_GATEWAY__OIDC__CLIENT_SECRET": keys["client_secret"]}
        if database_url:
            env["AIGC_GATEWAY__DATABASE__URL"] = database_url
        subprocess.run([sys.executable, "-m", "aigc_gateway.cli", "migrate", "-c", str(path), "--revision", "heads"],
                       cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        self.spawn("gateway", [sys.executable, "-m", "aigc_gateway.cli", "serve", "all", "-c", str(path)], env)
        self.wait_for("the four services", lambda: all(
            serving(f"127.0.0.1:{getattr(p, s)}") for s in ("template", "instance", "auth", "usersync")), 90)
        return path

    def bridge(self) -> None:
        sys.path.insert(0, str(ROOT / "bridge"))
        import gotools  # noqa: PLC0415 - bridge/ is a script directory, not a package

        binary = gotools.bridge()
        p = self.ports
        dist = dashboard.built_dashboard(ROOT)
        static = [f"--static-dir={dist}"] if dist else []
        if not dist:
            self.say("dashboard/dist is not built (scripts/setup.d/60-dashboard.sh): no dashboard page")
        child = self.spawn("bridge", [str(binary), "--listen", f"127.0.0.1:{p.bridge}", "--log-format", "text",
                                      f"--template=127.0.0.1:{p.template}", f"--instance=127.0.0.1:{p.instance}",
                                      f"--auth=127.0.0.1:{p.auth}", f"--usersync=127.0.0.1:{p.usersync}", *static])
        self.wait_for("the REST bridge", lambda: "listening on" in child.log.read_text(errors="replace"), 30)

    @property
    def dashboard_url(self) -> str:
        return f"http://dashboard.{self.opts.domain}:{self.ports.dashboard}"

    def dashboard_host(self) -> None:
        """nginx on the dashboard port: the page, /v1/… and sign-in on one origin (see .dashboard)."""
        binary = dashboard.nginx_binary()
        if binary is None:
            raise StackError("nginx is not installed: run scripts/setup.d/30-nginx.sh")
        p = self.ports
        conf = dashboard.nginx_config(self.state / "nginx", port=p.dashboard, host=f"dashboard.{self.opts.domain}",
                                         auth_addr=f"127.0.0.1:{p.auth_http}", bridge_addr=f"127.0.0.1:{p.bridge}")
        self.spawn("nginx", [binary, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"])

        def up() -> bool:
            import socket
            with socket.create_connection(("127.0.0.1", p.dashboard), timeout=1):
                return True

        self.wait_for("nginx (the dashboard host)", up, 15)

    def sign_in(self, user: str) -> str:
        """The user's ID token, by the login page's own form (no browser needed)."""
        import httpx

        with httpx.Client(follow_redirects=False, timeout=10) as http:
            response = http.get(self.issuer + "/auth", params={
                "client_id": CLI_CLIENT, "response_type": "id_token", "scope": "openid profile email roles",
                "redirect_uri": CLI_REDIRECT, "nonce": secrets.token_hex(8), "state": secrets.token_hex(8)})
            for _ in range(6):
                location = urllib.parse.urljoin(str(response.url), response.headers.get("location", ""))
                if location.startswith(CLI_REDIRECT):
                    fragment = urllib.parse.parse_qs(urllib.parse.urlsplit(location).fragment)
                    return fragment["id_token"][0]
                if "/interaction/" in location:
                    uid = location.rstrip("/").rsplit("/", 1)[-1]
                    response = http.post(urllib.parse.urljoin(location, f"/interaction/{uid}/login"),
                                         data={"username": user})
                elif location:
                    response = http.get(location)
                else:
                    break
        raise StackError(f"could not sign {user} in at the identity provider ({response.status_code})")

    def write_tokens(self) -> None:
        for user in USERS:
            write_private(self.state / f"{user}.token", self.sign_in(user) + "\n")

    def cli_config(self) -> Path:
        p = self.ports
        path = self.state / "aigcctl.yaml"
        write_private(path, yaml.safe_dump({
            "servers": {"template": f"127.0.0.1:{p.template}", "instance": f"127.0.0.1:{p.instance}",
                        "auth": f"127.0.0.1:{p.auth}", "usersync": f"127.0.0.1:{p.usersync}"},
            "namespace": self.opts.namespace, "token_file": "admin.token"}, sort_keys=False))
        return path

    def apply_samples(self, cli_config: Path) -> list[str]:
        samples = sorted((ROOT / "deploy" / "samples").glob("*.yaml"))
        staged = self.state / "samples"
        staged.mkdir(exist_ok=True)
        applied = []
        for sample in samples:
            obj = yaml.safe_load(sample.read_text())  # ${DOMAIN} stays: aigcctl fills it
            obj["metadata"]["namespace"] = self.opts.namespace
            copy = staged / sample.name
            copy.write_text(yaml.safe_dump(obj, sort_keys=False))
            result = subprocess.run([sys.executable, "-m", "aigc_gateway.ctl.main", "templates", "apply", "-f",
                                     str(copy), "--var", f"DOMAIN={self.opts.domain}"], cwd=ROOT, text=True,
                                    capture_output=True, env={**os.environ, "AIGCCTL_CONFIG": str(cli_config)})
            if result.returncode:
                raise StackError(f"applying {sample.name} failed:\n{result.stderr}")
            applied.append(obj["metadata"]["name"])
        return applied


def serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def banner(stack: Stack, applied: list[str], cli_config: Path) -> str:
    p, rel = stack.ports, os.path.relpath
    lines = [
        "", "AIGC Gateway development stack is up. Ctrl-C stops everything.", "",
        f"  REST API (bridge)   http://127.0.0.1:{p.bridge}/v1/namespaces/{stack.opts.namespace}/templates",
        "  OpenAPI             docs/openapi/aigc-gateway.swagger.json",
        f"  gRPC                template 127.0.0.1:{p.template}, instance :{p.instance}, auth :{p.auth}, "
        f"usersync :{p.usersync}",
        f"  Dashboard           {stack.dashboard_url}/   (*.localhost resolves to this machine; "
        "sign in as alice, bob or admin)",
        f"  Identity provider   {stack.issuer}  (login page: any user name, no password)",
        f"  Metrics             http://127.0.0.1:{p.metrics}/metrics",
        f"  Logs                {rel(stack.state / 'logs')}/", "",
        "  Users               admin (role admin), alice and bob (plain users); tokens in "
        f"{rel(stack.state)}/<user>.token",
        f"  Templates           {', '.join(applied) if applied else '(none: no Kubernetes)'}", "",
        "  Try the CLI (in another terminal, from the repository):",
        *(["    source .venv/bin/activate                   # aigcctl is installed there"]
          if sys.prefix != sys.base_prefix else []),
        f"    export AIGCCTL_CONFIG={rel(cli_config)}      # admin's token, these addresses",
        "    aigcctl templates list",
        f"    AIGC_TOKEN_FILE={rel(stack.state / 'alice.token')} aigcctl instances install stable-diffusion-cpu",
        f"    AIGC_TOKEN_FILE={rel(stack.state / 'alice.token')} aigcctl instances pause stable-diffusion-cpu/0",
        f"    AIGC_TOKEN_FILE={rel(stack.state / 'alice.token')} aigcctl instances resume stable-diffusion-cpu/0",
        "    aigcctl instances list -A -o json",
        f"    curl -H \"Authorization: Bearer $(cat {rel(stack.state / 'admin.token')})\" "
        f"http://127.0.0.1:{p.bridge}/v1/auditEvents", "",
        "ready", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/dev", description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL (scripts/postgres.sh) instead of SQLite")
    parser.add_argument("--no-testbed", action="store_true", help="no Kubernetes: templates and instances answer "
                        "UNAVAILABLE, the rest works")
    parser.add_argument("--keep-testbed", action="store_true", help="leave a test bed this run started up at exit")
    parser.add_argument("--domain", default=os.environ.get("AIGC_DEV_DOMAIN", "aigc.localhost"),
                        help="root domain of the dashboard and instance hosts (default aigc.localhost)")
    parser.add_argument("--namespace", default=os.environ.get("AIGC_DEV_NAMESPACE", "default"),
                        help="namespace of the templates (default: default)")
    parser.add_argument("--state-dir", default=os.environ.get("AIGC_DEV_STATE", str(ROOT / "var" / "dev")))
    opts = parser.parse_args(argv)
    state = Path(opts.state_dir).resolve()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    stack = Stack(opts, state, Ports.from_env(dict(os.environ)))
    busy = stack.ports.busy()
    if busy:
        print("scripts/dev: these ports are in use:\n  " + "\n  ".join(busy), file=sys.stderr)
        return 2
    if shutil.which("node") is None:
        print("scripts/dev: node is not installed (apt-get install nodejs npm)", file=sys.stderr)
        return 2

    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (a background job)
    try:
        if not opts.no_testbed:
            stack.testbed()
        database_url = ""
        if opts.postgres:
            database_url = stack.postgres()
            stack.say(f"PostgreSQL: {database_url}")
        else:
            stack.say(f"database: embedded SQLite in {os.path.relpath(state)}")
        keys = load_keys(state / "secrets.json")
        stack.say("starting the identity provider (oidc-provider)")
        stack.identity_provider(keys["client_secret"])
        stack.say("starting the four services")
        stack.gateway(database_url, keys)
        stack.say("starting the REST bridge")
        stack.bridge()
        stack.say("starting nginx for the dashboard host")
        stack.dashboard_host()
        stack.write_tokens()
        cli_config = stack.cli_config()
        applied: list[str] = []
        if not opts.no_testbed:
            stack.say("applying the sample templates")
            applied = stack.apply_samples(cli_config)
        print(banner(stack, applied, cli_config), flush=True)
        refreshed = time.monotonic()
        while True:
            time.sleep(1)
            stack.check_alive()
            if time.monotonic() - refreshed > TOKEN_REFRESH_SECONDS:
                stack.write_tokens()
                refreshed = time.monotonic()
    except KeyboardInterrupt:
        print("", flush=True)
        stack.say("Ctrl-C: stopping")
        return_code = 0
    except (StackError, subprocess.CalledProcessError) as exc:
        print(f"scripts/dev: {exc}", file=sys.stderr, flush=True)
        return_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stack.stop()
    stack.say("stopped")
    return return_code


if __name__ == "__main__":
    sys.exit(main())
