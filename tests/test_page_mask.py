"""The mask painter on image 1 (issue #6, item 1, the page's part), in headless Chromium.

The page sends the mask as the optional form field ``mask``: a greyscale PNG the size of the
first image, white = edit, black = keep. These tests read the request the page builds (the
request is intercepted, answered with a refusal so the page keeps its state, and parsed), then
send one for real to the app.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, Route, expect

from tests.browser import (
    browser,  # noqa: F401  (the module's Chromium)
    drop_files,
    live_studio,
    multipart_fields,
    newest_job,
    open_page,
    shot,
)
from tests.conftest import image_bytes
from tests.live import LiveServer


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    with live_studio(tmp_path) as server:
        yield server


class Capture:
    """Holds the multipart bodies the page posts to /api/tasks, and refuses them."""

    def __init__(self, page: Page) -> None:
        self.sent: list[dict[str, list[tuple[str | None, bytes]]]] = []
        self.page = page
        page.route("**/api/tasks", self._handle)

    def _handle(self, route: Route) -> None:
        request = route.request
        if request.method != "POST":
            route.continue_()
            return
        body = request.post_data_buffer or b""
        self.sent.append(multipart_fields(request.headers["content-type"], body))
        route.fulfill(
            status=400, json={"error": {"code": "held_by_test", "message": "Held by the test."}}
        )

    def submit(self) -> dict[str, list[tuple[str | None, bytes]]]:
        count = len(self.sent)
        self.page.click("#submit")
        expect(self.page.locator("#form-error .error")).to_have_text("Held by the test.")
        assert len(self.sent) == count + 1
        return self.sent[-1]

    def stop(self) -> None:
        self.page.unroute("**/api/tasks")


def _mask(fields: dict[str, list[tuple[str | None, bytes]]]) -> Image.Image:
    (name, data), *_ = fields["mask"]
    assert name == "mask.png"
    # 8-bit greyscale: PNG colour type 0 in the IHDR chunk.
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 8 and data[25] == 0
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _stroke(page: Page, y: float, x0: float, x1: float) -> None:
    """A mouse stroke across the mask canvas, in fractions of its displayed size."""
    # Image 1 decides the canvas's place on the page: wait until it has loaded.
    page.wait_for_function(
        "() => { const i = document.getElementById('mask-image');"
        " return i.complete && i.naturalWidth === document.getElementById('mask-canvas').width }"
    )
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    assert box
    page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y, steps=12)
    page.mouse.up()


def test_paint_erase_invert_clear_and_the_png_the_page_sends(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(browser, live.url + "/") as page:
        expect(page.locator("#mask-tools")).to_be_hidden()
        drop_files(
            page,
            "#drop",
            [
                ("first.png", image_bytes(640, 480), "image/png"),
                ("second.png", image_bytes(500, 500), "image/png"),
            ],
        )
        expect(page.locator("#previews li")).to_have_count(2)
        expect(page.locator("#mask-state")).to_have_text(
            "No mask: the model may change the whole image."
        )
        page.click("#mask-toggle")
        expect(page.locator("#mask-editor")).to_be_visible()
        expect(page.locator("#mask-toggle")).to_have_attribute("aria-expanded", "true")
        page.fill("#prompt", "make the shirt red")
        capture = Capture(page)

        # Without paint, no mask goes with the job.
        assert "mask" not in capture.submit()

        _stroke(page, 0.5, 0.25, 0.75)
        expect(page.locator("#mask-state")).to_have_text(
            "Mask painted: only the painted area is edited."
        )
        shot(page, "desktop-en-mask")
        fields = capture.submit()
        assert [name for name, _ in fields["images"]] == ["first.png", "second.png"]
        mask = _mask(fields)
        assert mask.mode == "L" and mask.size == (640, 480)
        assert mask.getpixel((320, 240)) == 255
        assert mask.getpixel((200, 240)) == 255
        assert mask.getpixel((320, 20)) == 0 and mask.getpixel((5, 5)) == 0

        # The eraser takes paint away.
        page.click("#mask-eraser")
        expect(page.locator("#mask-eraser")).to_have_attribute("aria-pressed", "true")
        _stroke(page, 0.5, 0.45, 0.55)
        mask = _mask(capture.submit())
        assert mask.getpixel((320, 240)) == 0
        assert mask.getpixel((200, 240)) == 255

        # Invert swaps edit and keep.
        page.click("#mask-invert")
        mask = _mask(capture.submit())
        assert mask.getpixel((320, 240)) == 255
        assert mask.getpixel((200, 240)) == 0
        assert mask.getpixel((5, 5)) == 255

        # Clear: nothing painted, nothing sent.
        page.click("#mask-clear")
        expect(page.locator("#mask-state")).to_contain_text("No mask")
        assert "mask" not in capture.submit()

        # Another image 1 starts a new mask of its size.
        page.click("#mask-brush")
        _stroke(page, 0.5, 0.2, 0.4)
        page.get_by_role("button", name="Move image 2 earlier").click()
        expect(page.locator("#announce")).to_contain_text(
            "Image 1 changed, so the mask was cleared."
        )
        expect(page.locator("#mask-state")).to_contain_text("No mask")
        page.click("#mask-toggle")
        _stroke(page, 0.5, 0.3, 0.7)
        fields = capture.submit()
        assert [name for name, _ in fields["images"]] == ["second.png", "first.png"]
        mask = _mask(fields)
        assert mask.size == (500, 500) and mask.getpixel((250, 250)) == 255

        # And the app takes the job with its mask.
        capture.stop()
        page.click("#submit")
        expect(newest_job(page)).to_be_visible()
        expect(page.locator("#previews li")).to_have_count(0)
        expect(page.locator("#mask-tools")).to_be_hidden()


def test_touch_paints_on_a_phone(browser: Browser, live: LiveServer):  # noqa: F811
    with open_page(
        browser,
        live.url + "/",
        viewport={"width": 375, "height": 800},
        is_mobile=True,
        has_touch=True,
    ) as page:
        drop_files(page, "#drop", [("photo.png", image_bytes(800, 600), "image/png")])
        page.click("#mask-toggle")
        canvas = page.locator("#mask-canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        assert box
        page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("#mask-state")).to_contain_text("Mask painted")
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        shot(page, "phone-en-mask")
        page.fill("#prompt", "remove the spot")
        capture = Capture(page)
        mask = _mask(capture.submit())
        assert mask.size == (800, 600)
        assert mask.getpixel((400, 300)) == 255
        assert mask.getpixel((10, 10)) == 0
