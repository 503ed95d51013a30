"""The dashboard on the dev stack, as a person uses it: `scripts/dev`'s stack (the test bed, the
identity provider's login page, the four services, the REST bridge serving the built dashboard, nginx
as the dashboard host) and Debian's chromium driven by Playwright from PyPI (never a downloaded browser).

Screenshots of the main screens land in var/artifacts/dashboard/ (gitignored), at desktop and phone widths.
"""
from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.local import Ports
from tests.plugins.testbed import Testbed, _delete_namespace, run_in_thread

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / "dashboard" / "dist"
AXE = REPO / "dashboard" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO / "var" / "artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
# A quota for a user of test_quota.py alone (quotas apply per user; the other tests' users stay unlimited).
QUOTA_USER = "quinn"
QUOTAS = {f"AIGC_GATEWAY__INSTANCE__QUOTAS__USERS__{QUOTA_USER.upper()}__RUNNING": "1"}
# Idle auto-pause for test_idle.py's template alone: its `idle-after` annotation is short; every other template
# keeps the configured defaults (hours), so no other test's instance is warned or paused. A short warning lead
# and a fast culler pass make the warning and the pause come within a minute.
IDLE = {"AIGC_GATEWAY__INSTANCE__IDLE__WARNING_SECONDS": "25", "AIGC_GATEWAY__INSTANCE__IDLE__INTERVAL_SECONDS": "1"}
STACK_TIMEOUT = 600  # a cold `scripts/dev` start on a loaded 2-core machine


def require_browser() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail("chromium is not installed: run scripts/setup.d/60-dashboard.sh", pytrace=False)
    if not (DIST / "index.html").is_file() or not AXE.is_file():
        pytest.fail("the dashboard is not built: run scripts/setup.d/60-dashboard.sh", pytrace=False)


@dataclass
class DevStack:
    url: str  # the dashboard host, e.g. http://dashboard.aigc.localhost:8300
    namespace: str
    state: Path
    ports: Ports

    def api(self, path: str) -> str:
        return self.url + path

    def template_path(self, name: str) -> str:
        return f"/v1/namespaces/{self.namespace}/templates/{name}"

    def token(self, user: str) -> str:
        return (self.state / f"{user}.token").read_text().strip()


def _free_offset() -> int:
    for _ in range(50):
        offset = random.randrange(2000, 14000, 10)
        if not Ports.from_env({"AIGC_DEV_PORT_OFFSET": str(offset)}).busy():
            return offset
    pytest.skip("no free set of ports for the dev stack")


@pytest.fixture(scope="package")
def dev_stack(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """`scripts/dev` (its Python part; the setup steps already ran) in a namespace of its own."""
    require_browser()
    namespace = f"t-dashboard-{uuid.uuid4().hex[:6]}"
    offset = _free_offset()
    state = tmp_path_factory.mktemp("dev")
    log = (state / "stack.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack", "--namespace", namespace, "--state-dir", str(state)],
        cwd=REPO, env={**os.environ, "AIGC_DEV_PORT_OFFSET": str(offset), **QUOTAS, **IDLE}, stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL)
    try:
        banner = _wait_ready(proc, state / "stack.log")
        match = re.search(r"Dashboard\s+(http://\S+?)/\s", banner)
        assert match, banner
        yield DevStack(match.group(1), namespace, state, Ports.from_env({"AIGC_DEV_PORT_OFFSET": str(offset)}))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        try:
            run_in_thread(lambda: _delete_namespace(testbed.kubeconfig, namespace, 0), timeout=60)
        except Exception as exc:  # noqa: BLE001 - cleanup must not fail the tests
            print(f"warning: could not delete namespace {namespace}: {exc}")


def _wait_ready(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + STACK_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "\nready\n" in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"the dev stack exited ({proc.returncode}) before it was ready:\n{text[-4000:]}", pytrace=False)
        time.sleep(0.3)  # polling a log file the stack writes; readiness is the line, not the time
    pytest.fail(f"the dev stack was not ready within {STACK_TIMEOUT}s:\n{log.read_text()[-4000:]}", pytrace=False)


# Package scope for both: sync Playwright keeps an event loop running in this thread while it is open,
# so it must be closed before any asyncio test outside this package runs.
@pytest.fixture(scope="package")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Any]:
    """``page = new_page(locale="en-US")``: a fresh browser profile (cookies, cache, storage) per call."""
    contexts: list[Any] = []

    def make(locale: str = "en-US", viewport: dict[str, int] | None = None) -> Any:
        context = chromium.new_context(locale=locale, viewport=viewport or DESKTOP)
        context.set_default_timeout(30_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, stack: DevStack, user: str, path: str = "/") -> None:
    """Open the dashboard signed out: through /sign-in to the identity provider's login page, and back."""
    page.goto(stack.url + path)
    page.wait_for_url(re.compile(r"/interaction/"))
    page.fill("input[name=username]", user)
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url(re.compile("^" + re.escape(stack.url + path)))
    page.locator("header .who").wait_for()


def card(page: Any, template: str, stack: DevStack) -> Any:
    return page.locator(f'article[data-template="namespaces/{stack.namespace}/templates/{template}"]')


def shoot(page: Any, name: str) -> None:
    """Screenshots of one screen at desktop and phone widths."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for label, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size(size)


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """axe-core (from the dashboard's lockfile) run on the page as it is now: WCAG 2 A/AA rules."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21aa']}});
        return r.violations.map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}));
    }""")
    return list(result)


@dataclass
class Answer:
    status: int
    body: Any
    request_id: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def call(page: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
    """A REST call from inside the page (the browser's own fetch: same origin, the session cookie),
    as another tab or a script of the user's would make it."""
    result = page.evaluate("""async ([method, path, body, headers]) => {
        const init = {method, headers: {...headers}, credentials: 'same-origin'};
        if (body !== null) { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
        const r = await fetch(path, init);
        const text = await r.text();
        let json = null;
        try { json = JSON.parse(text.split('\\n')[0]); } catch (e) { json = text; }
        return {status: r.status, body: json, requestId: r.headers.get('X-Request-Id') || ''};
    }""", [method, path, body, headers or {}])
    return Answer(result["status"], result["body"], result["requestId"])


def wait_state(page: Any, instance: str, state: str, timeout_ms: int = 180_000) -> dict[str, Any]:
    """Follow the instance's WatchInstance stream (from inside the page) until it reports ``state``."""
    return page.evaluate("""async ([name, state, timeout]) => {
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), timeout);
        const r = await fetch('/v1/' + name + ':watch', {credentials: 'same-origin', signal: abort.signal});
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffered = '';
        try {
          for (;;) {
            const {value, done} = await reader.read();
            if (done) throw new Error('the watch ended before ' + state);
            buffered += value;
            let i;
            while ((i = buffered.indexOf('\\n')) >= 0) {
              const line = JSON.parse(buffered.slice(0, i));
              buffered = buffered.slice(i + 1);
              if (line.error) throw new Error(JSON.stringify(line.error));
              if (line.result.instance.state === state) return line.result.instance;
            }
          }
        } finally { clearTimeout(timer); abort.abort(); }
    }""", [instance, state, timeout_ms])
