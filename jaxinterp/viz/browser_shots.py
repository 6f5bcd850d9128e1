"""The feature browser in a real headless browser: screenshots and load time.

Debian's ``chromium`` (``apt-get install -y chromium``; the Makefile's test target installs
it) driven by Playwright from pip with ``executable_path`` pointing at it, so no browser is
downloaded. Flags: headless, ``--no-sandbox`` (containers run as root), and no background
networking, component updates, sync or first-run work, so nothing reaches the network.
When either piece is missing, :func:`unavailable` says why and callers skip the step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = ("--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage")


def find_chromium() -> str | None:
    """Path of the chromium executable (``JAXINTERP_CHROMIUM`` overrides), or None."""
    for candidate in (os.environ.get("JAXINTERP_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def unavailable() -> str | None:
    """Why a headless browser cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the 'playwright' package is not installed (pip install playwright; no browser download needed)"
    if find_chromium() is None:
        return "no chromium executable (apt-get install -y chromium)"
    return None


@contextlib.contextmanager
def headless_chromium() -> Iterator[Any]:
    """A Playwright ``Browser`` on the system chromium (headless, no network services)."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), headless=True, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, index_html: str | Path, fragment: str = "", width: int = 1280) -> tuple[Any, float]:
    """Opens the browser page from disk; returns the page and the index's load time in ms
    (navigation start to the index rendered)."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(Path(index_html).resolve().as_uri() + fragment)
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, float(page.evaluate("window.JI.ready"))


def screenshot_browser(index_html: str | Path, out_dir: str | Path, feature: int) -> dict[str, Any]:
    """PNGs of the index and of one feature's page; ``{"index_png", "feature_png",
    "index_load_ms"}``, or ``{"skipped": reason}`` when no headless browser is available."""
    reason = unavailable()
    if reason:
        return {"skipped": reason}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API refuses a thread with a running asyncio loop (a Jupyter
    # kernel's main thread), so the browser is driven from a worker thread of its own.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_screenshots, Path(index_html), out_dir, int(feature)).result()


def _screenshots(index_html: Path, out_dir: Path, feature: int) -> dict[str, Any]:
    with headless_chromium() as browser:
        page, load_ms = open_page(browser, index_html)
        page.screenshot(path=str(out_dir / "browser_index.png"))
        page.evaluate(f"location.hash = '#f={int(feature)}'")
        page.wait_for_selector("#top-contexts", timeout=60_000)
        page.screenshot(path=str(out_dir / "browser_feature.png"), full_page=True)
    return {"index_png": str(out_dir / "browser_index.png"), "feature_png": str(out_dir / "browser_feature.png"),
            "index_load_ms": round(load_ms, 1)}
