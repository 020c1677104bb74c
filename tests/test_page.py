"""The page in a real headless Chromium: drop, paste, limits in the page, submit, result."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.main import create_app
from tests.browser import CHROMIUM_ARGS, chromium_path, drop_files, paste_files, shot
from tests.conftest import image_bytes, studio_settings
from tests.live import LiveServer


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    # No API key: the app runs on its built-in simulator, as a new user's first start does.
    settings = studio_settings(tmp_path, None, simulator_delay=2.0, poll_interval=0.2)
    with LiveServer(create_app(settings)) as server:
        yield server


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.goto(live.url + "/")
    yield pg
    context.close()
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors


def test_drop_submit_and_see_the_result(page: Page):
    expect(page.locator("#sim-banner")).to_contain_text("Simulated results")
    expect(page.locator(".counts")).to_have_text("0 running · 0 completed · keeps the last 20")
    shot(page, "desktop-empty")

    drop_files(page, "#drop", [("shirt.png", image_bytes(640, 480), "image/png")])
    expect(page.locator("#previews li")).to_have_count(1)
    expect(page.locator("#previews li .hint")).to_contain_text("640×480")
    page.fill("#prompt", "make the shirt red")
    expect(page.locator("#prompt-count")).to_contain_text("4 / 2000 tokens")
    shot(page, "desktop-images-added")

    page.click("#submit")
    job = page.locator(".jobs .job").first
    expect(job).to_be_visible()
    expect(page.locator("#previews li")).to_have_count(0)
    expect(job).to_have_attribute("data-status", re.compile("queued|running"))
    expect(job.locator("progress")).to_be_visible()
    shot(page, "desktop-running")
    expect(job).to_have_attribute("data-status", "succeeded", timeout=15000)
    expect(job.locator(".thumb.result img")).to_be_visible()
    expect(page.locator(".counts")).to_have_text("0 running · 1 completed · keeps the last 20")
    # Polling stopped: the history no longer carries a timed trigger.
    assert "every" not in (page.locator("#history").get_attribute("hx-trigger") or "")
    download = job.locator("a.button", has_text="Download")
    assert download.get_attribute("download")
    shot(page, "desktop-result")


def test_paste_and_remove(page: Page):
    paste_files(page, [("clip.png", image_bytes(500, 500), "image/png")])
    expect(page.locator("#previews li")).to_have_count(1)
    page.click("#previews li button.remove")
    expect(page.locator("#previews li")).to_have_count(0)


def test_limits_are_refused_in_the_page(page: Page):
    drop_files(
        page,
        "#drop",
        [
            ("tiny.png", image_bytes(300, 300), "image/png"),
            ("anim.gif", b"GIF89a", "image/gif"),
            ("ok.png", image_bytes(400, 400), "image/png"),
        ],
    )
    error = page.locator("#form-error .error")
    expect(error).to_contain_text('"tiny.png" is 300×300 px')
    expect(error).to_contain_text('"anim.gif" is not an allowed format')
    expect(page.locator("#previews li")).to_have_count(1)
    shot(page, "desktop-limit-refused")


def test_server_refusal_is_shown(page: Page):
    drop_files(page, "#drop", [("ok.png", image_bytes(400, 400), "image/png")])
    page.fill("#prompt", "红" * 2100)
    page.click("#submit")
    expect(page.locator("#form-error .error")).to_contain_text("2000 tokens")


def test_failed_job_shows_reason_and_retry(page: Page):
    drop_files(page, "#drop", [("ok.png", image_bytes(400, 400), "image/png")])
    page.fill("#prompt", "make it a cat [sim:fail=content_policy_violation]")
    page.click("#submit")
    job = page.locator(".jobs .job").first
    expect(job).to_have_attribute("data-status", "failed", timeout=15000)
    expect(job.locator(".error")).to_contain_text("safety filter")
    expect(job.get_by_role("button", name="Retry")).to_be_visible()
    shot(page, "desktop-error")


def test_phone_width(browser: Browser, live: LiveServer):
    context = browser.new_context(viewport={"width": 375, "height": 800}, is_mobile=True)
    pg = context.new_page()
    pg.goto(live.url + "/")
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    shot(pg, "phone-empty")
    context.close()
