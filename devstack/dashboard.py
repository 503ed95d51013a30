"""The dashboard host of the development stack: nginx routing one origin as the Helm chart's Ingress
does (docs/dashboard.md) — the auth service's /auth, /sign-in, /sign-in-callback and /sign-out by
exact path, everything else to the REST bridge, which serves /v1/… and the built dashboard at /.

The configuration is rendered from tools/nginx/ (the same templates the auth tests render), into
the stack's state directory; nginx runs in the foreground as a child of the stack.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

NGINX_TEMPLATES = Path(__file__).resolve().parents[1] / "tools" / "nginx"


def render(template: str, directory: Path = NGINX_TEMPLATES, **values: object) -> str:
    text = (directory / template).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", str(value))
    left = re.findall(r"\{\{\w+\}\}", text)
    if left:
        raise ValueError(f"unrendered placeholders in {template}: {left}")
    return text


def nginx_config(prefix: Path, *, port: int, host: str, auth_addr: str, bridge_addr: str,
                 templates: Path = NGINX_TEMPLATES) -> Path:
    """Write ``prefix/nginx.conf`` for the dashboard host on 127.0.0.1:``port``; return its path."""
    prefix.mkdir(parents=True, exist_ok=True)
    server = render("dashboard.conf.tmpl", templates, LISTEN=f"127.0.0.1:{port}", HOST=host,
                    AUTH_ADDR=auth_addr, BRIDGE_ADDR=bridge_addr)
    conf = render("nginx.conf.tmpl", templates, PREFIX=prefix, LISTEN=f"127.0.0.1:{port}", SERVERS=server,
                  USER="user root;" if os.geteuid() == 0 else "")
    path = prefix / "nginx.conf"
    path.write_text(conf)
    return path


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def built_dashboard(root: Path) -> Path | None:
    """dashboard/dist when it has been built (scripts/setup.d/60-dashboard.sh), else None."""
    dist = root / "dashboard" / "dist"
    return dist if (dist / "index.html").is_file() else None
