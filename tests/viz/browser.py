"""Open an HTML file in headless Chromium (Debian's, driven by playwright), offline, recording
every request, console error and page error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Without these Chromium reaches for the network at start (updates, sync, field trials).
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL = (
    "install them with `apt-get install chromium chromium-driver` and `pip install playwright` "
    "(no `playwright install`: the tests drive Debian's Chromium); `make test` installs both"
)


def chromium_path() -> Path:
    found = CHROMIUM if CHROMIUM.is_file() else None
    if found is None and shutil.which("chromium"):
        found = Path(str(shutil.which("chromium")))
    if found is None:
        pytest.skip(f"browser test: Chromium is not installed at {CHROMIUM}; {INSTALL}")
    return found


@dataclass
class Visit:
    page: Any
    url: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions

    def foreign_requests(self) -> list[str]:
        """Requests to anything but the page's own file and inline data: URIs."""
        return [r for r in self.requests if r != self.url and not r.startswith("data:")]


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium, or a skip saying how to install what is missing."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"browser test: the playwright package is not importable; {INSTALL}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(path), args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def visit(chromium: Any, path: Path, width: int = 1400) -> Visit:
    """Open `path` in a new page and wait for it to load; the visit records what happened."""
    page = chromium.new_page(viewport={"width": width, "height": 900})
    seen = Visit(page, path.resolve().as_uri())
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on(
        "console",
        lambda message: seen.errors.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.goto(seen.url, wait_until="load")
    return seen
