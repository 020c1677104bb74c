"""Headless Chromium (Debian's package) driven by Playwright, and helpers to act as a person."""

from __future__ import annotations

import base64
import contextlib
import email.policy
import io
import os
import shutil
from collections.abc import Iterator
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, sync_playwright

from app.main import create_app
from tests.conftest import studio_settings
from tests.live import LiveServer

SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = os.environ.get("QES_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        raise RuntimeError(
            "Debian's chromium is needed for the browser tests: apt-get install -y chromium"
        )
    return path


def drop_files(page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """Drop files on an element with a real DataTransfer, as a drag from the desktop does."""
    payload = [
        {"name": name, "type": mime, "b64": base64.b64encode(data).decode()}
        for name, data, mime in files
    ]
    transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, {type: f.type}));
            }
            return dt;
        }""",
        payload,
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def paste_files(page, files: list[tuple[str, bytes, str]]) -> None:
    """Fire a paste event carrying files on the document, as Ctrl+V of a copied image does."""
    payload = [
        {"name": name, "type": mime, "b64": base64.b64encode(data).decode()}
        for name, data, mime in files
    ]
    page.evaluate(
        """(files) => {
            const dt = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.b64), c => c.charCodeAt(0));
                dt.items.add(new File([bytes], f.name, {type: f.type}));
            }
            const ev = new ClipboardEvent(
                'paste', {clipboardData: dt, bubbles: true, cancelable: true});
            document.dispatchEvent(ev);
        }""",
        payload,
    )


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- shared by the page tests ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (Debian's package, no downloaded browser)."""
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@contextlib.contextmanager
def live_studio(tmp_path: Path, **overrides: Any) -> Iterator[LiveServer]:
    """The real app on uvicorn, on its built-in simulator (no API key), with these settings."""
    values: dict[str, Any] = {"simulator_delay": 1.0, "poll_interval": 0.2}
    values.update(overrides)
    with LiveServer(create_app(studio_settings(tmp_path, None, **values))) as server:
        yield server


class PageSession:
    """A browser context and page on the studio, failing the test on any CSP violation."""

    def __init__(self, browser: Browser, url: str, **context: Any) -> None:
        context.setdefault("viewport", {"width": 1280, "height": 900})
        parts = urlsplit(url)
        context.setdefault("base_url", f"{parts.scheme}://{parts.netloc}")
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.goto(url)

    def close(self) -> None:
        self.context.close()
        bad = [e for e in self.errors if "Content Security Policy" in e or "Refused" in e]
        assert not bad, bad


@contextlib.contextmanager
def open_page(browser: Browser, url: str, **context: Any) -> Iterator[Page]:
    session = PageSession(browser, url, **context)
    try:
        yield session.page
    finally:
        session.close()


def multipart_fields(content_type: str, body: bytes) -> dict[str, list[tuple[str | None, bytes]]]:
    """The parts of a multipart/form-data body: name -> [(filename, bytes), ...] in order."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, list[tuple[str | None, bytes]]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        fields.setdefault(str(name), []).append((part.get_filename(), data))
    return fields


def newest_job(page: Page) -> Locator:
    return page.locator("#history .jobs .job").first


def pixel(data: bytes, xy: tuple[int, int]) -> Any:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").getpixel(xy)
