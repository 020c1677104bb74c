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
    job.get_by_role("button", name="Retry").click()
    expect(job).to_have_attribute("data-status", re.compile("queued|running"))
    expect(job).to_have_attribute("data-status", "failed", timeout=15000)
    expect(page.locator("#announce")).to_contain_text("An edit failed: The provider's safety")


def test_phone_width(browser: Browser, live: LiveServer):
    context = browser.new_context(viewport={"width": 375, "height": 800}, is_mobile=True)
    pg = context.new_page()
    pg.goto(live.url + "/")
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 375
    shot(pg, "phone-empty")
    context.close()


def test_drop_zone_shows_it_is_ready_and_takes_files_dropped_anywhere(page: Page):
    payload = page.evaluate_handle(
        "() => { const dt = new DataTransfer();"
        " dt.items.add(new File([''], 'x.png', {type: 'image/png'})); return dt; }"
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": payload})
    expect(page.locator("#drop")).to_have_class(re.compile(r"\bready\b"))
    # It calms down once the drag has left.
    expect(page.locator("#drop")).not_to_have_class(re.compile(r"\bready\b"))
    # A drop that misses the zone is still taken (the browser would otherwise open the file).
    drop_files(page, "#history", [("late.png", image_bytes(500, 500), "image/png")])
    expect(page.locator("#previews li")).to_have_count(1)
    # Phones and tablets offer the camera: the inputs take any image type.
    assert page.locator("#images").get_attribute("accept").startswith("image/*")
    assert page.locator("#camera-input").get_attribute("accept") == "image/*"
    assert page.locator("#camera-input").get_attribute("capture") == "environment"


def test_count_and_size_limits_are_refused_in_the_page(page: Page):
    drop_files(
        page,
        "#drop",
        [(f"p{i}.png", image_bytes(400 + i, 400), "image/png") for i in range(4)],
    )
    expect(page.locator("#form-error .error")).to_have_text("At most 3 images: 1 not added.")
    expect(page.locator("#previews li")).to_have_count(3)
    page.get_by_role("button", name="Remove image 3").click()
    # A file over 10 MB, built in the page (no need to send 11 MB through the test driver).
    page.evaluate(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(11 * 1024 * 1024)], 'huge.png',
                                  {type: 'image/png'}));
            for (const name of ['dragenter', 'dragover', 'drop']) {
                document.getElementById('drop').dispatchEvent(
                    new DragEvent(name, {dataTransfer: dt, bubbles: true, cancelable: true}));
            }
        }"""
    )
    expect(page.locator("#form-error .error")).to_have_text(
        '"huge.png" is 11.0 MB; each image may be at most 10 MB.'
    )
    expect(page.locator("#previews li")).to_have_count(2)
    page.click("#submit")
    expect(page.locator("#form-error .error")).to_have_text(
        "The prompt is empty: describe the edit you want."
    )
    expect(page.locator("#prompt")).to_be_focused()


def test_second_tab_follows_the_same_job_and_delete_asks_first(page: Page, live: LiveServer):
    drop_files(page, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
    page.fill("#prompt", "make the shirt red")
    page.click("#submit")
    expect(page.locator(".jobs .job")).to_have_count(1)
    other = page.context.new_page()
    other.goto(live.url + "/")
    twin = other.locator(".jobs .job").first
    expect(twin).to_have_attribute("data-status", re.compile("queued|running|succeeded"))
    expect(twin).to_have_attribute("data-status", "succeeded", timeout=15000)
    expect(page.locator(".jobs .job").first).to_have_attribute("data-status", "succeeded")
    expect(other.locator(".counts")).to_have_text("0 running · 1 completed · keeps the last 20")

    messages: list[str] = []

    def answer(dialog, accept: bool) -> None:
        messages.append(dialog.message)
        dialog.accept() if accept else dialog.dismiss()

    page.once("dialog", lambda d: answer(d, False))
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".jobs .job")).to_have_count(1)
    page.once("dialog", lambda d: answer(d, True))
    page.get_by_role("button", name="Delete").click()
    expect(page.locator(".jobs .job")).to_have_count(0)
    assert messages == ["Delete this job and its images?"] * 2
    expect(page.locator(".counts")).to_have_text("0 running · 0 completed · keeps the last 20")
    # The second tab still shows the job; deleting it there says plainly that it is gone.
    other.once("dialog", lambda d: d.accept())
    other.get_by_role("button", name="Delete").click()
    expect(other.locator("#form-error .error")).to_have_text("No such job.")
    other.reload()
    expect(other.locator(".jobs .job")).to_have_count(0)


def test_history_warns_before_the_oldest_is_dropped(browser: Browser, tmp_path):
    settings = studio_settings(tmp_path, None, simulator_delay=0.2, history_limit=2)
    with LiveServer(create_app(settings)) as server:
        context = browser.new_context()
        pg = context.new_page()
        pg.goto(server.url + "/")
        for prompt in ("first", "second"):
            drop_files(pg, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
            pg.fill("#prompt", prompt)
            pg.click("#submit")
            expect(pg.locator(".jobs .job").first.locator(".prompt")).to_have_text(prompt)
        expect(pg.locator("#history .warn")).to_have_text(
            "Your history is full: the next job removes the oldest finished one."
        )
        expect(pg.locator(".counts")).to_contain_text("keeps the last 2")
        expect(pg.locator(".jobs .job").first).to_have_attribute(
            "data-status", "succeeded", timeout=15000
        )
        expect(pg.locator(".jobs .job").nth(1)).to_have_attribute("data-status", "succeeded")
        drop_files(pg, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
        pg.fill("#prompt", "third")
        pg.click("#submit")
        expect(pg.locator(".jobs .job .prompt")).to_have_text(["third", "second"])
        context.close()
