"""Generated input thrown at the door, and the whole API fuzzed from its own OpenAPI document.

* hypothesis: images of random sizes (inside and outside the limits), modes and formats, random
  bytes, truncations and bit flips go to ``app.images.ingest_image``; prompts of any Unicode,
  control characters and great length go to ``app.prompts.check_prompt``. The only exception
  either may raise is :class:`app.errors.InputError` (a 4xx with a message), and what they accept
  always meets the limits.
* schemathesis: every operation in ``/openapi.json`` is called with generated requests against a
  real uvicorn server; none may answer 5xx.

Example counts are kept modest so the module runs in well under a minute on a small machine.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error

from app.errors import InputError
from app.images import MAX_SIDE, MIN_SIDE, ingest_image
from app.main import create_app
from app.prompts import MAX_PROMPT_TOKENS, check_prompt, count_tokens
from app.upstream.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import studio_settings
from tests.live import LiveServer

LABEL = 'image 1 ("fuzz.png")'
EDGE_SIDES = [1, 7, 64, MIN_SIDE - 1, MIN_SIDE, MIN_SIDE + 1, MAX_SIDE, MAX_SIDE + 1, 5000]
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr", "LAB"]
ALLOWED = ["PNG", "JPEG", "BMP", "WEBP", "TIFF"]
OTHERS = ["GIF", "ICO", "PPM", "TGA", "PCX", "DIB"]
# Weighted so that about half the generated files are acceptable: the property on accepted
# images needs examples as much as the one on refusals does.
SIDES = st.one_of(
    st.integers(MIN_SIDE, 900), st.integers(MIN_SIDE, 900), st.sampled_from(EDGE_SIDES)
)
FORMATS = st.sampled_from(ALLOWED * 3 + OTHERS)
DAMAGE = st.sampled_from(["none"] * 4 + ["truncate", "flip", "prefix"])
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repo; failures print their example anyway
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _encode(img: Image.Image, fmt: str) -> bytes:
    """Save in ``fmt``; where the encoder refuses the mode or size, convert, or fall back to PNG."""
    for candidate, name in (
        (img, fmt),
        (img.convert("RGBA"), fmt),
        (img.convert("RGB"), fmt),
        (img.convert("RGB"), "PNG"),
    ):
        buf = io.BytesIO()
        try:
            candidate.save(buf, name)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return buf.getvalue()
    raise AssertionError(f"cannot encode {img.mode} {img.size} at all")


@st.composite
def images(draw: st.DrawFn) -> bytes:
    width, height = draw(SIDES), draw(SIDES)
    if width * height > 1_600_000:  # one long side is enough to test the limits, and cheaper
        height = MIN_SIDE
    mode = draw(st.sampled_from(MODES))
    colour = draw(st.integers(0, 255))
    img = Image.new("L", (width, height), colour)
    if draw(st.booleans()) and width > 2 and height > 2:
        img.paste(255 - colour, (0, 0, width // 2, height // 2))
    img = img.convert(mode) if mode not in ("I;16",) else img.convert("I").convert("I;16")
    data = _encode(img, draw(FORMATS))
    damage = draw(DAMAGE)
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip" and data:
        mutable = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(mutable) - 1))
            mutable[position] = draw(st.integers(0, 255))
        data = bytes(mutable)
    elif damage == "prefix":
        data = draw(st.binary(max_size=64)) + data
    return data


def _assert_refusal(exc: InputError) -> None:
    assert 400 <= exc.status_code < 500
    assert exc.code and exc.message


def _assert_accepted(out) -> None:  # type: ignore[no-untyped-def]
    assert MIN_SIDE <= out.width <= MAX_SIDE and MIN_SIDE <= out.height <= MAX_SIDE
    assert out.sha256 == hashlib.sha256(out.data).hexdigest()
    assert (out.ext, out.content_type) in {
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("webp", "image/webp"),
    }
    with Image.open(io.BytesIO(out.data)) as again:
        again.load()
        assert again.size == (out.width, out.height)
        assert again.mode in ("L", "RGB", "RGBA")
        assert getattr(again, "n_frames", 1) == 1
        assert not again.info.get("exif") and not again.info.get("icc_profile")


@FUZZ
@given(data=st.one_of(images(), images(), images(), st.binary(max_size=4096)))
def test_ingest_refuses_only_with_input_error_and_accepts_only_what_fits(data: bytes):
    try:
        out = ingest_image(data, label=LABEL)
    except InputError as exc:
        event(f"refused: {exc.code}")  # shown by --hypothesis-show-statistics
        _assert_refusal(exc)
        assert LABEL in exc.message  # it names the file
        return
    event(f"accepted as {out.ext}")
    _assert_accepted(out)


TEXT = st.one_of(
    st.text(max_size=300),
    # Control characters, NULs, lone surrogates, private use: every code point there is.
    st.text(st.characters(exclude_categories=()), max_size=300),
    st.text(st.sampled_from(" \t\r\n\x00\x0b\x0c\u3000\u00a0\u200b\ufeff"), max_size=50),
    st.text(st.sampled_from("红a 。!"), min_size=1900, max_size=4200),  # around 2000 tokens
    st.binary(max_size=300).map(lambda raw: raw.decode("utf-8", errors="replace")),
)


@FUZZ
@given(prompt=st.one_of(st.none(), TEXT))
def test_prompt_check_refuses_only_with_input_error_and_accepts_only_what_fits(prompt):
    try:
        text = check_prompt(prompt)
    except InputError as exc:
        _assert_refusal(exc)
        return
    assert text and text == text.strip()
    assert "\x00" not in text
    assert count_tokens(text) <= MAX_PROMPT_TOKENS


# --- schemathesis over the OpenAPI document -----------------------------------------------------


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("fuzz")
    sim = SimulatorServer(SimulatorConfig(delay=0.05, api_key="test-key"))
    sim.start()
    server = LiveServer(create_app(studio_settings(root, sim, simulator_delay=0.05)))
    server.server.config.proxy_headers = False
    try:
        with server:
            yield server.url
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def token(live_url: str) -> str:
    """A personal token, so the fuzzing also goes down the token paths (and past /v1's door)."""
    made = httpx.post(f"{live_url}/api/tokens", json={"name": "fuzz"}, timeout=10)
    assert made.status_code == 201
    return made.json()["token"]


def _openapi_document() -> dict:
    """The app's OpenAPI document, built without starting it (it is static)."""
    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(studio_settings(Path(scratch), None))
        return app.openapi()


# Loaded eagerly: schemathesis' lazy fixture loader relies on a pytest internal that pytest 9
# no longer has. Requests go to the live server through ``base_url``.
schema = schemathesis.openapi.from_dict(_openapi_document())


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case, live_url: str, token: str):  # type: ignore[no-untyped-def]
    # As a browser visitor (a fresh anonymous session each time) and as a script with a token.
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
        case.call_and_validate(
            base_url=live_url, headers=headers, checks=[not_a_server_error], timeout=30
        )
