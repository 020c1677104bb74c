"""The page as a person uses it, in headless Chromium against the real app and its simulator:
reorder (mouse and keyboard) and the order the server receives, a job followed to its result,
the before/after slider, "Edit this result", copying the prompt, keyboard-only submission,
presets, the plus model's options and the announcements."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import (
    browser,  # noqa: F401  (the module's Chromium)
    drop_files,
    live_studio,
    newest_job,
    open_page,
    pixel,
    shot,
)
from tests.conftest import image_bytes
from tests.live import LiveServer

ROUTE = "**/api/tasks"


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with live_studio(tmp_path) as server:
        yield server


@pytest.fixture
def page(browser: Browser, live: LiveServer) -> Iterator[Page]:  # noqa: F811
    with open_page(
        browser, live.url + "/", permissions=["clipboard-read", "clipboard-write"]
    ) as pg:
        yield pg


def _meta(page: Page) -> list[str]:
    return page.locator("#previews li .meta").all_inner_texts()


def _api_tasks(page: Page) -> list[dict]:
    return page.request.get("/api/tasks").json()["tasks"]


def test_reorder_by_keyboard_and_mouse_and_the_server_gets_that_order(page: Page):
    drop_files(
        page,
        "#drop",
        [
            ("a.png", image_bytes(500, 400), "image/png"),
            ("b.png", image_bytes(600, 400), "image/png"),
            ("c.png", image_bytes(700, 400), "image/png"),
        ],
    )
    expect(page.locator("#previews li")).to_have_count(3)
    expect(page.locator("#order-help")).to_be_visible()
    assert [m.split("· ")[-1] for m in _meta(page)] == ["500×400", "600×400", "700×400"]

    # Keyboard: the focused "later" button follows the image it moved.
    page.get_by_role("button", name="Move image 1 later").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#previews li").nth(0).locator(".meta")).to_contain_text("600×400")
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == (
        "Move image 2 later"
    )
    page.keyboard.press("Enter")
    assert [m.split("· ")[-1] for m in _meta(page)] == ["600×400", "700×400", "500×400"]
    expect(page.locator("#announce")).to_contain_text("now image 3")

    # Mouse: drag the third preview onto the first.
    page.locator("#previews li").nth(2).drag_to(page.locator("#previews li").nth(0))
    assert [m.split("· ")[-1] for m in _meta(page)] == ["500×400", "600×400", "700×400"]
    page.get_by_role("button", name="Move image 3 earlier").click()
    assert [m.split("· ")[-1] for m in _meta(page)] == ["500×400", "700×400", "600×400"]

    page.fill("#prompt", "the person from image 1 in the scene of image 2")
    page.click("#submit")
    expect(newest_job(page)).to_be_visible()
    inputs = _api_tasks(page)[0]["inputs"]
    got = [(i["width"], i["name"]) for i in inputs]
    assert got == [(500, "a.png"), (700, "c.png"), (600, "b.png")]


def test_job_followed_to_result_compare_copy_and_edit_this_result(page: Page, live: LiveServer):
    drop_files(page, "#drop", [("shirt.png", image_bytes(640, 480), "image/png")])
    page.fill("#prompt", "make the shirt red")
    page.click("#submit")
    job = newest_job(page)
    expect(job).to_have_attribute("data-status", re.compile("queued|running"))
    expect(page.locator("#announce")).to_contain_text("Edit sent")
    # Polling runs while the job does, and shows elapsed time and the provider.
    assert "every" in page.locator("#history").get_attribute("hx-trigger")
    expect(job.locator(".job-head .hint")).to_contain_text("simulator", timeout=10000)
    expect(job).to_have_attribute("data-status", "succeeded", timeout=15000)
    expect(page.locator("#announce")).to_have_text("An edit finished.")
    assert "every" not in page.locator("#history").get_attribute("hx-trigger")

    # Large view with the before/after slider against the first input.
    job.locator("button.thumb.result").click()
    viewer = page.locator("#viewer")
    expect(viewer).to_be_visible()
    task = _api_tasks(page)[0]
    before = page.locator("#cmp-before").get_attribute("src")
    after = page.locator("#cmp-after").get_attribute("src")
    assert task["inputs"][0]["url"].endswith(before)
    assert task["results"][0]["url"].endswith(after)
    expect(page.locator("#cmp-range")).to_be_focused()
    clip = "document.getElementById('cmp-after').style.clipPath"
    assert "50%" in page.evaluate(clip)
    page.keyboard.press("Home")
    assert re.search(r"\b0%", page.evaluate(clip))
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    assert page.locator("#cmp-range").input_value() == "10"
    assert "10%" in page.evaluate(clip)
    box = page.locator("#compare").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    assert abs(int(page.locator("#cmp-range").input_value()) - 75) <= 1
    assert page.evaluate("document.getElementById('cmp-line').style.left").startswith("7")
    shot(page, "desktop-en-compare")
    assert page.locator("#viewer-download").get_attribute("href") == after
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()

    # Copy the prompt.
    job.get_by_role("button", name="Copy prompt").click()
    expect(page.locator("#announce")).to_have_text("Prompt copied.")
    assert page.evaluate("navigator.clipboard.readText()") == "make the shirt red"

    # Edit this result: it becomes the new input, and the next job gets exactly those pixels.
    job.get_by_role("button", name="Edit this result").click()
    expect(page.locator("#previews li")).to_have_count(1)
    expect(page.locator("#previews li .meta")).to_contain_text("640×480")
    expect(page.locator("#announce")).to_contain_text("added as image 1")
    expect(page.locator("#prompt")).to_be_focused()
    page.keyboard.type("now make it blue")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#history .job")).to_have_count(2)
    tasks = _api_tasks(page)
    first_result = page.request.get(tasks[1]["results"][0]["url"]).body()
    second_input = page.request.get(tasks[0]["inputs"][0]["url"]).body()
    assert pixel(second_input, (10, 10)) == pixel(first_result, (10, 10))
    assert pixel(second_input, (600, 400)) == pixel(first_result, (600, 400))


def test_keyboard_only_submission_with_visible_focus(page: Page, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(image_bytes(520, 400))
    # Subscribe early: Playwright turns on file-chooser interception asynchronously.
    page.on("filechooser", lambda chooser: None)
    page.wait_for_timeout(200)

    def tab_to(element_id: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    tab_to("choose")
    outline = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; })()"
    )
    assert outline == ["solid", "3px"]
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(path))
    expect(page.locator("#previews li")).to_have_count(1)
    tab_to("prompt")
    page.keyboard.type("make the sky orange")
    page.keyboard.press("Control+Enter")
    expect(newest_job(page)).to_be_visible()
    expect(newest_job(page).locator(".prompt")).to_have_text("make the sky orange")
    expect(page.locator("#previews li")).to_have_count(0)


def test_announcements_and_live_regions(page: Page):
    assert page.locator("#announce").get_attribute("aria-live") == "polite"
    assert page.locator("#form-error").get_attribute("aria-live") == "assertive"
    assert page.locator("#prompt-count").get_attribute("aria-live") == "polite"
    drop_files(page, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
    expect(page.locator("#announce")).to_have_text("1 image(s) added; 1 of 3 chosen.")
    page.get_by_role("button", name="Remove image 1").click()
    expect(page.locator("#announce")).to_have_text("Image removed; 0 of 3 chosen.")
    expect(page.locator("#choose")).to_be_focused()
    # Every form control has a label a screen reader can read.
    unlabeled = page.evaluate(
        """[...document.querySelectorAll(
             '#edit-form input:not([type=hidden]), #edit-form select, #edit-form textarea, button')]
           .filter(el => el.offsetParent !== null || el.closest('details'))
           .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                         && !el.textContent.trim())
           .map(el => el.id || el.outerHTML.slice(0, 60))"""
    )
    assert unlabeled == []


def test_presets_fill_the_prompt(page: Page):
    presets = page.locator(".presets .chip")
    assert presets.count() >= 6
    page.get_by_role("button", name="Cat captain").click()
    value = page.locator("#prompt").input_value()
    assert value.startswith("A cute fluffy cat captain sitting in a spaceship commander chair")
    expect(page.locator("#prompt")).to_be_focused()
    expect(page.locator("#prompt-count")).not_to_contain_text("0 / 2000")
    page.get_by_role("button", name="Combine images").click()
    assert "image 1" in page.locator("#prompt").input_value()


def test_plus_model_options_are_sent_under_their_names(page: Page):
    options = page.locator("#more-options")
    expect(options).to_be_hidden()
    page.select_option("#model", "qwen-image-edit-plus")
    expect(options).to_be_visible()
    page.click("#more-options summary")
    page.fill("#opt-n", "2")
    page.fill("#opt-negative", "blurry, low quality")
    page.fill("#opt-seed", "42")
    page.uncheck("#opt-extend")
    page.check("#opt-watermark")
    drop_files(page, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
    page.fill("#prompt", "make the shirt red")
    page.click("#submit")
    expect(newest_job(page)).to_be_visible()
    task = _api_tasks(page)[0]
    assert task["model"] == "qwen-image-edit-plus"
    assert task["options"] == {
        "n": 2,
        "negative_prompt": "blurry, low quality",
        "seed": 42,
        "prompt_extend": False,
        "watermark": True,
    }
    expect(newest_job(page).locator(".meta")).to_contain_text("qwen-image-edit-plus · n=2")

    # A combination the API refuses is explained in the page, and nothing is lost.
    drop_files(page, "#drop", [("a.png", image_bytes(500, 400), "image/png")])
    page.fill("#opt-size", "1024x1024")
    page.fill("#prompt", "again")
    page.click("#submit")
    expect(page.locator("#form-error .error")).to_contain_text("size can only be set when n is 1")
    expect(page.locator("#previews li")).to_have_count(1)

    # Back on the default model the options are hidden and not sent.
    page.select_option("#model", "qwen-image-edit")
    expect(options).to_be_hidden()
    page.click("#submit")
    expect(page.locator("#history .job")).to_have_count(2)
    task = _api_tasks(page)[0]
    assert task["model"] == "qwen-image-edit" and task["options"] == {}
