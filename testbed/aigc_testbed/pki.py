"""Webhook serving certificates for kruise-game, made at `up` time into the state directory.

kruise-game v1.0.0 can only generate certificates for an in-cluster Service name, which the
apiserver cannot reach here, so we make a private CA and a serving certificate for 127.0.0.1
ourselves (openssl, from Debian's `openssl` package) and register URL-mode webhooks with that CA.
Keys never leave the state directory, which `down` removes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .util import fail


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        fail(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_serving_cert(directory: Path) -> bytes:
    """Write ca.crt, tls.crt and tls.key (SAN IP:127.0.0.1, DNS:localhost); return the CA PEM."""
    if shutil.which("openssl") is None:
        fail("openssl not found: apt-get install -y openssl")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ext.cnf").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
             "-subj", "/CN=aigc-testbed-webhook-ca", "-keyout", "ca.key", "-out", "ca.crt",
             cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "tls.key", "-out", "tls.csr", cwd=directory)
    _openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-extfile", "ext.cnf", "-out", "tls.crt",
             cwd=directory)
    for name in ("ca.key", "tls.key"):
        (directory / name).chmod(0o600)
    return (directory / "ca.crt").read_bytes()
