"""The test bed talks to its cluster through the kubectl it built (no Python client needed)."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from .config import Config
from .util import fail


class Kubectl:
    def __init__(self, cfg: Config, log: Path):
        self.cfg = cfg
        self.binary = str(cfg.bin("kubernetes", "kubectl"))
        self.log = log  # every call and its output is appended here for post-mortems

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [self.binary, f"--kubeconfig={self.cfg.kubeconfig}", "--request-timeout=20s", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, text=True, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            fail(f"kubectl {' '.join(args)} timed out after {timeout}s", self.log)
        with self.log.open("a") as fh:
            fh.write(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}\n")
        if check and proc.returncode != 0:
            fail(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}", self.log)
        return proc

    def apply(self, manifest: str | dict | list, server_side: bool = False) -> None:
        """Apply YAML/JSON text or a dict/list of objects."""
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        args = ["apply", "-f", "-"]
        if server_side:
            # CRDs are too large for the last-applied annotation of client-side apply.
            args += ["--server-side", "--force-conflicts", "--field-manager=aigc-testbed"]
        self.run(*args, stdin=manifest)

    def get_json(self, *args: str) -> dict | None:
        proc = self.run("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            return None
        return json.loads(proc.stdout)

    def ready(self) -> bool:
        """The apiserver's own aggregate readiness."""
        proc = self.run("get", "--raw", "/readyz", check=False, timeout=25)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"


def http_ok(url: str, timeout: float = 5.0) -> bool:
    """A plain-HTTP health endpoint (kruise's and kruise-game's /readyz) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False
