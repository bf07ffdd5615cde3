"""Debian's headless Chromium driven by Playwright (no browser download), and the servers the UI tests open."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: Offline, as root, in a container: no sandbox, no GPU, no background connections (refused here anyway), and no
#: WebGL (software-rendered 3-D animations keep the page too busy to type into on 2 cores).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-3d-apis"]

requires_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser` installs "
                                       "Debian's chromium (as root)")


@contextmanager
def browser_page(width: int = 1600, height: int = 1000, webgl: bool = False):
    """A fresh Chromium page (its own empty profile) with a 30-s default timeout; ``webgl`` for pages that plot
    with it (MLflow's run comparison), at the cost of a busy page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True,
            args=[a for a in CHROMIUM_ARGS if not (webgl and a == "--disable-3d-apis")],
            viewport={"width": width, "height": height})
        context.set_default_timeout(30_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@contextmanager
def background_server(command: list[str], cwd: Path, env: dict, url: str, ready_timeout: float = 120):
    """``command`` running until the block ends (its process group killed), once ``url`` answers 200."""
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if server.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"{command[0]} exited: {log.read().decode(errors='replace')[-3000:]}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} did not answer in {ready_timeout} s"
                time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
