"""Mask-guided edits: the mask goes with the job, pixels outside it stay exactly as they were,
pixels inside come from the result."""

from __future__ import annotations

import io

from PIL import Image, ImageChops, ImageOps

from tests.conftest import image_bytes, stored_files, wait_for


def _mask(width: int, height: int, box: tuple[int, int, int, int], fmt: str = "PNG") -> bytes:
    img = Image.new("L", (width, height), 0)
    img.paste(255, box)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _post(client, source: bytes, mask: bytes | None):
    files = [("images", ("photo.png", source, "image/png"))]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return client.post("/api/tasks", data={"prompt": "make the sky red"}, files=files)


def test_outside_the_mask_is_untouched_inside_comes_from_the_result(client):
    width, height = 600, 400
    source = image_bytes(width, height)
    # Edit only the left half.
    response = _post(client, source, _mask(width, height, (0, 0, 300, 400)))
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["mask"]["width"] == width and job["mask"]["content_type"] == "image/png"
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded"

    result = Image.open(io.BytesIO(client.get(done["results"][0]["url"]).content)).convert("RGB")
    original = Image.open(io.BytesIO(source)).convert("RGB")
    edited = ImageOps.invert(original)  # what the simulator returns for the whole image
    assert result.size == original.size
    # Right half: outside the mask, every pixel exactly the original.
    right = (300, 0, 600, 400)
    assert ImageChops.difference(result.crop(right), original.crop(right)).getbbox() is None
    # Well inside the mask (past the soft inner edge): exactly the result.
    inner = (0, 0, 280, 400)
    assert ImageChops.difference(result.crop(inner), edited.crop(inner)).getbbox() is None
    # The edge blends: a pixel just inside is neither.
    px = result.getpixel((298, 300))
    assert px != original.getpixel((298, 300)) and px != edited.getpixel((298, 300))
    assert client.get(done["mask"]["url"]).headers["content-type"] == "image/png"


def test_mask_painted_with_alpha_counts_opacity(client):
    width, height = 500, 500
    strokes = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (100, 100, 200, 200))
    buf = io.BytesIO()
    strokes.save(buf, "PNG")
    done = wait_for(client, _post(client, image_bytes(width, height), buf.getvalue()).json()["id"])
    assert done["status"] == "succeeded"


def test_bad_masks_are_refused_and_nothing_is_stored(client, tmp_path):
    source = image_bytes(600, 400)
    cases = [
        (_mask(500, 400, (0, 0, 100, 100)), "500×400 px; it must be the size of the first image"),
        (_mask(600, 400, (0, 0, 100, 100), "JPEG"), "must be a greyscale PNG"),
        (_mask(600, 400, (0, 0, 0, 0)), "all black"),
        (b"not an image", "the mask"),
    ]
    for mask, fragment in cases:
        response = _post(client, source, mask)
        assert 400 <= response.status_code < 500, response.text
        assert fragment in response.json()["error"]["message"]
    assert stored_files(tmp_path / "data") == []
    assert client.get("/api/tasks").json()["tasks"] == []
