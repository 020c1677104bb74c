"""Kiosk mode (QES_KIOSK): large touch targets, a QR code beside each result that opens a
signed, expiring link without any cookie, and the idle reset that deletes the visitor's jobs
and gives the browser a fresh anonymous session."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, Page, expect

from tests.browser import (
    browser,  # noqa: F401  (the module's Chromium)
    drop_files,
    live_studio,
    newest_job,
    open_page,
    shot,
)
from tests.conftest import image_bytes, post_job, studio_settings, wait_for

KIOSK = {"width": 1920, "height": 1080}


@pytest.fixture
def kiosk_url(tmp_path) -> Iterator[str]:
    with live_studio(tmp_path, kiosk=True, kiosk_idle_seconds=6) as server:
        yield server.url


def _session(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == "qes_session")


def _finished_job(page: Page) -> None:
    drop_files(page, "#drop", [("visitor.png", image_bytes(640, 480), "image/png")])
    page.fill("#prompt", "make the shirt red")
    page.click("#submit")
    expect(newest_job(page)).to_have_attribute("data-status", "succeeded", timeout=15000)


def test_qr_link_downloads_without_cookies_and_idle_reset(browser: Browser, kiosk_url: str):  # noqa: F811
    with open_page(browser, kiosk_url + "/", viewport=KIOSK) as page:
        expect(page.locator("html")).to_have_class(re.compile("kiosk"))
        expect(page.locator("#settings-link")).to_have_count(0)
        first_session = _session(page)
        _finished_job(page)
        page.mouse.move(300, 300)  # the visitor is still looking: the idle time starts again
        job = newest_job(page)
        qr = job.locator(".qr img")
        expect(qr).to_be_visible()
        page.wait_for_function("() => document.querySelector('.qr img').naturalWidth > 0")
        shot(page, "kiosk-en-result-qr")

        # The QR route answers an SVG whose encoded link (also in its <title>) needs no cookie.
        answer = page.request.get(qr.get_attribute("src"))
        assert answer.status == 200
        assert answer.headers["content-type"].startswith("image/svg+xml")
        svg = answer.text()
        assert "<svg" in svg and "<path" in svg
        encoded = re.search(r"<title>([^<]+)</title>", svg).group(1)
        assert encoded == answer.headers["x-signed-url"]
        assert encoded.startswith(kiosk_url + "/s/") and encoded.endswith("/result-1.png")
        download = job.locator("a.button", has_text="Download").get_attribute("href")
        owner_copy = page.request.get(download)
        visible = job.locator("a.signed-link")
        shown = visible.get_attribute("data-signed-url")
        assert visible.get_attribute("href") == shown
        for link in (encoded, shown):
            fetched = httpx.get(link)  # a phone: no cookie, no token
            assert fetched.status_code == 200
            assert fetched.content == owner_copy.body()
            assert fetched.headers["content-type"] == "image/png"

        # Nobody touches the screen: a warning, then a clean screen and a new visitor.
        warning = page.locator("#idle-warning")
        expect(warning).to_be_visible(timeout=10000)
        expect(warning).to_contain_text("Still there?")
        shot(page, "kiosk-en-idle-warning")
        expect(page.locator("#history .job")).to_have_count(0, timeout=15000)
        expect(page.locator(".empty")).to_be_visible()
        assert _session(page) != first_session
        # The old visitor's jobs and files are gone, signed links included.
        assert httpx.get(shown).status_code == 404
        old = httpx.get(kiosk_url + "/api/tasks", cookies={"qes_session": first_session})
        assert old.json()["tasks"] == []


def test_touching_the_screen_keeps_the_session_and_start_over_resets(
    browser: Browser,  # noqa: F811
    kiosk_url: str,
):
    with open_page(browser, kiosk_url + "/", viewport=KIOSK, has_touch=True) as page:
        _finished_job(page)
        first_session = _session(page)
        # Activity before the idle time passes restarts the timer, over and over.
        for _ in range(2):
            expect(page.locator("#idle-warning")).to_be_visible(timeout=10000)
            page.mouse.move(200, 200)
            page.mouse.move(220, 210)
            expect(page.locator("#idle-warning")).to_be_hidden()
        assert _session(page) == first_session
        expect(page.locator("#history .job")).to_have_count(1)
        page.get_by_role("button", name="Start over").click()
        expect(page.locator("#history .job")).to_have_count(0)
        assert _session(page) != first_session


def test_kiosk_touch_targets_are_large(browser: Browser, kiosk_url: str):  # noqa: F811
    with open_page(browser, kiosk_url + "/", viewport=KIOSK, has_touch=True) as page:
        _finished_job(page)
        small = page.evaluate(
            """[...document.querySelectorAll('button, a.button, select, input, summary')]
               .filter(el => el.offsetParent !== null && el.type !== 'checkbox')
               .filter(el => el.getBoundingClientRect().height < 48)
               .map(el => el.id || el.textContent.trim() || el.outerHTML.slice(0, 60))"""
        )
        assert small == []


def test_reset_route_exists_only_in_kiosk_mode_and_qr_is_owner_only(tmp_path, make_client):
    plain: TestClient = make_client(studio_settings(tmp_path / "a", None))
    assert plain.post("/kiosk/reset").status_code == 404

    kiosk: TestClient = make_client(studio_settings(tmp_path / "b", None, kiosk=True))
    task = post_job(kiosk).json()
    assert wait_for(kiosk, task["id"])["status"] == "succeeded"
    assert kiosk.get(f"/partials/tasks/{task['id']}/qr.svg").status_code == 200
    assert kiosk.get(f"/partials/tasks/{task['id']}/qr.svg?position=5").status_code == 404
    stranger = TestClient(kiosk.app)
    assert stranger.get(f"/partials/tasks/{task['id']}/qr.svg").status_code == 404
    reset = kiosk.post("/kiosk/reset")
    assert reset.status_code == 204
    assert (
        'qes_session=""' in reset.headers["set-cookie"]
        or "Max-Age=0" in reset.headers["set-cookie"]
    )
    kiosk.cookies.clear()
    assert kiosk.get("/api/tasks").json()["tasks"] == []
