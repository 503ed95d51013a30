#!/usr/bin/env python3
"""The dashboard's first load from a cold browser cache on the dev stack: time to the first rendered
template card and to an interactive page, JS and CSS bytes (gzip, as sent), and the number of requests.

    python bench/dashboard.py                         # starts scripts/dev's stack (test bed) itself
    python bench/dashboard.py --url http://dashboard.aigc.localhost:8000   # a running scripts/dev
    python bench/dashboard.py --rounds 10 --user alice

Each round is a new browser context (empty cache, the signed-in session cookie only) in Debian's
chromium driven by Playwright, loading the page once. In-page timestamps (performance.now(), from the
navigation's start): `first card` is when the first template card is in the DOM (a MutationObserver
installed before any script of the page runs); `interactive` is when, after that, the main thread is
first idle (requestIdleCallback): the cards are rendered and their buttons answer. Bytes are the
encoded (gzip) body sizes the Resource Timing API reports for the page's scripts and stylesheets; the
request count covers everything the page asked for until it was interactive (document, assets, API).
Goals from the issue: first card under 1 s, under 250 KB of gzip JS.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

WATCH = """
(() => {
  window.__bench = {};
  const seen = () => {
    if (window.__bench.firstCard === undefined && document.querySelector('article.card')) {
      window.__bench.firstCard = performance.now();
      requestIdleCallback(() => { window.__bench.interactive = performance.now(); });
      return true;
    }
    return false;
  };
  new MutationObserver((_, obs) => { if (seen()) obs.disconnect(); })
    .observe(document, {childList: true, subtree: true});
})();
"""


def start_stack(state: Path) -> tuple[subprocess.Popen, str]:
    offset = str(3000 + (os.getpid() % 500) * 10)
    log = (state / "stack.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "devstack", "--namespace",
                             f"bench-dashboard-{uuid.uuid4().hex[:6]}", "--state-dir", str(state)],
                            cwd=REPO, env={**os.environ, "AIGC_DEV_PORT_OFFSET": offset}, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        text = (state / "stack.log").read_text(errors="replace")
        if "\nready\n" in text:
            match = re.search(r"Dashboard\s+(http://\S+?)/\s", text)
            assert match, text
            return proc, match.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"the dev stack exited:\n{text[-3000:]}")
        time.sleep(0.3)
    raise SystemExit("the dev stack was not ready in 600 s")


def sign_in(browser, url: str, user: str) -> dict:
    context = browser.new_context()
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_url(re.compile(r"/interaction/"))
    page.fill("input[name=username]", user)
    page.locator("form button[type=submit]").first.click()
    page.wait_for_url(re.compile("^" + re.escape(url)))
    page.locator("article.card").first.wait_for()
    state = context.storage_state()
    context.close()
    return {"cookies": state["cookies"], "origins": []}  # the session only: no cache, no storage


def one_load(browser, url: str, storage: dict) -> dict:
    context = browser.new_context(storage_state=storage, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.add_init_script(WATCH)
    page.goto(url + "/")
    page.wait_for_function("() => window.__bench && window.__bench.interactive !== undefined", timeout=60_000)
    figures = page.evaluate("""() => {
        const res = performance.getEntriesByType('resource');
        const sum = (re) => res.filter(r => re.test(new URL(r.name).pathname))
                               .reduce((a, r) => a + r.encodedBodySize, 0);
        const nav = performance.getEntriesByType('navigation')[0];
        return {firstCard: window.__bench.firstCard, interactive: window.__bench.interactive,
                js: sum(/\\.js$/), css: sum(/\\.css$/), html: nav.encodedBodySize,
                domContentLoaded: nav.domContentLoadedEventEnd,
                api: Math.max(0, ...res.filter(r => new URL(r.name).pathname.startsWith('/v1/'))
                                     .map(r => r.responseEnd - r.startTime))};
    }""")
    figures["requests"] = len(requests)
    context.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running dev stack's dashboard URL (default: start one)")
    parser.add_argument("--user", default="alice")
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    from playwright.sync_api import sync_playwright

    proc = None
    with tempfile.TemporaryDirectory(prefix="aigc-bench-dashboard-") as tmp:
        url = opts.url
        if not url:
            print("starting scripts/dev's stack (the test bed, the services, the bridge, nginx)…", flush=True)
            proc, url = start_stack(Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                storage = sign_in(browser, url.rstrip("/"), opts.user)
                rounds = [one_load(browser, url.rstrip("/"), storage) for _ in range(opts.rounds)]
                browser.close()
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                proc.wait(60)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"dashboard first load, cold cache, {opts.rounds} rounds (median; min–max) at {url}")
    for key, label in (("firstCard", "first template card"), ("interactive", "interactive"),
                       ("domContentLoaded", "DOMContentLoaded"), ("api", "slowest API call")):
        values = [r[key] for r in rounds]
        print(f"  {label:<22} {med[key]:7.0f} ms   ({min(values):.0f}–{max(values):.0f})")
    print(f"  {'JS (gzip)':<22} {med['js'] / 1024:7.1f} KiB")
    print(f"  {'CSS (gzip)':<22} {med['css'] / 1024:7.1f} KiB")
    print(f"  {'HTML (gzip)':<22} {med['html'] / 1024:7.1f} KiB")
    print(f"  {'requests':<22} {med['requests']:7.0f}     (document, assets and API calls until interactive)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
