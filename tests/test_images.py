"""Ingest at the door: what is accepted, what is refused and why, and what survives re-encoding.

Every image is made here with Pillow, so no binary fixture can hide what a test really feeds in.
"""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zipfile
import zlib
from typing import Any

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from app.errors import InputError
from app.images import (
    ALLOWED_FORMATS,
    MAX_FILE_BYTES,
    MAX_SIDE,
    MIN_SIDE,
    IngestedImage,
    ingest_image,
    make_thumbnail,
)

LABEL = 'image 2 ("cat.png")'


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def picture(size: tuple[int, int] = (400, 400), mode: str = "RGB") -> Image.Image:
    """A picture with structure (not one flat colour), so encoders and rotations have work."""
    img = Image.linear_gradient("L").resize(size).convert(mode)
    img.paste(Image.new(mode, (20, 20), "red" if mode != "L" else 255), (0, 0))
    return img


def refused(data: bytes | io.BytesIO, code: str, **kwargs: Any) -> InputError:
    with pytest.raises(InputError) as info:
        ingest_image(data, label=LABEL, **kwargs)
    err = info.value
    assert err.code == code, err.message
    assert LABEL in err.message
    return err


def reopen(result: IngestedImage) -> Image.Image:
    img = Image.open(io.BytesIO(result.data))
    img.load()
    return img


def assert_no_metadata(result: IngestedImage) -> None:
    img = reopen(result)
    assert "exif" not in img.info
    assert "icc_profile" not in img.info
    assert "xmp" not in img.info and "XML:com.adobe.xmp" not in img.info
    assert len(img.getexif()) == 0
    assert not getattr(img, "text", {})


def png_with_header(width: int, height: int) -> bytes:
    """A well-formed PNG that declares any size but carries only a few bytes of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# --- accepted --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ext", "content_type"),
    [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("BMP", "png", "image/png"),
        ("WEBP", "webp", "image/webp"),
        ("TIFF", "png", "image/png"),
    ],
)
def test_each_allowed_format_is_accepted(fmt: str, ext: str, content_type: str) -> None:
    result = ingest_image(encode(picture((500, 420)), fmt), label=LABEL)
    assert result.source_format == fmt
    assert (result.width, result.height) == (500, 420)
    assert (result.ext, result.content_type) == (ext, content_type)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    out = reopen(result)
    assert out.size == (500, 420)
    assert out.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    assert_no_metadata(result)


def test_allowed_formats_map_to_canonical_extensions() -> None:
    assert ALLOWED_FORMATS == {
        "JPEG": "jpg",
        "PNG": "png",
        "BMP": "bmp",
        "WEBP": "webp",
        "TIFF": "tiff",
    }


def test_webp_is_reencoded_losslessly() -> None:
    source = Image.open(io.BytesIO(encode(picture(), "WEBP", lossless=True)))
    result = ingest_image(encode(source, "WEBP", lossless=True), label=LABEL)
    assert reopen(result).tobytes() == source.convert("RGB").tobytes()


def test_file_object_is_accepted() -> None:
    result = ingest_image(io.BytesIO(encode(picture(), "PNG")), label=LABEL)
    assert (result.width, result.height, result.ext) == (400, 400, "png")


def test_extreme_allowed_sides_are_accepted() -> None:
    result = ingest_image(encode(picture((MIN_SIDE, MAX_SIDE)), "PNG"), label=LABEL)
    assert (result.width, result.height) == (MIN_SIDE, MAX_SIDE)


def test_same_input_gives_the_same_sha() -> None:
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = encode(picture(), fmt)
        first = ingest_image(data, label=LABEL)
        second = ingest_image(io.BytesIO(data), label="another label")
        assert first.sha256 == second.sha256
        assert first.data == second.data


# --- format is decided by content ------------------------------------------------------------


def test_png_bytes_named_jpg_are_taken_as_png() -> None:
    result = ingest_image(encode(picture(), "PNG"), label='image 1 ("photo.jpg")')
    assert result.source_format == "PNG"
    assert result.ext == "png"


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", "HTML"),
        (
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="400" '
            b'height="400"><script>alert(1)</script></svg>',
            "SVG",
        ),
    ],
)
def test_markup_is_refused(data: bytes, named: str) -> None:
    err = refused(data, "unsupported_format")
    assert named in err.message
    assert "JPG/JPEG, PNG, BMP, WEBP, TIFF" in err.message


def test_zip_named_png_is_refused() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("cat.png", encode(picture(), "PNG"))
    err = refused(buf.getvalue(), "unsupported_format")
    assert "ZIP" in err.message


def test_gif_is_refused_and_named() -> None:
    err = refused(encode(picture(mode="P"), "GIF"), "unsupported_format")
    assert err.message == (f"{LABEL} is a GIF; allowed formats are JPG/JPEG, PNG, BMP, WEBP, TIFF.")


def test_random_bytes_are_refused() -> None:
    refused(bytes(range(256)) * 40, "unsupported_format")


# --- sizes -----------------------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    refused(b"", "empty_file")
    refused(io.BytesIO(b""), "empty_file")


def test_oversize_bytes_are_refused() -> None:
    data = encode(picture(), "PNG")
    err = refused(data, "file_too_large", max_bytes=len(data) - 1)
    assert err.status_code == 413


def test_oversize_message_gives_size_and_limit_in_mb() -> None:
    err = refused(b"\0" * (MAX_FILE_BYTES + 1), "file_too_large")
    assert "10.1 MB" in err.message
    assert "at most 10 MB" in err.message


class EndlessStream(io.RawIOBase):
    """A stream that never ends and cannot seek: ingest must stop reading on its own."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), 100)  # short reads, like a socket
        buffer[:size] = b"\xff" * size
        self.served += size
        return size


def test_stream_is_read_at_most_one_byte_past_the_limit() -> None:
    stream = EndlessStream()
    err = refused(stream, "file_too_large", max_bytes=5000)  # type: ignore[arg-type]
    assert stream.served <= 5001
    assert "larger than 4.9 KB" in err.message


def test_oversize_stream_reports_its_full_size_when_it_can() -> None:
    stream = io.BytesIO(b"\0" * (3 * 1024 * 1024))
    err = refused(stream, "file_too_large", max_bytes=1024 * 1024)
    assert "is 3 MB" in err.message
    assert "at most 1 MB" in err.message


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        ((MIN_SIDE - 1, 400), "383x400"),
        ((400, MIN_SIDE - 1), "400x383"),
        ((MAX_SIDE + 1, 400), "3073x400"),
        ((400, MAX_SIDE + 1), "400x3073"),
    ],
)
def test_sides_outside_the_limits_are_refused(size: tuple[int, int], shown: str) -> None:
    err = refused(encode(Image.new("RGB", size, "white"), "PNG"), "bad_dimensions")
    assert shown in err.message
    assert "384" in err.message and "3072" in err.message


def test_sides_are_checked_from_the_header_before_decoding() -> None:
    # The pixel data could never fill 5000x5000; refusing for size proves nothing was decoded.
    refused(png_with_header(5000, 5000), "bad_dimensions")


@pytest.mark.parametrize("side", [10_000, 50_000])
def test_decompression_bomb_is_refused_fast(side: int) -> None:
    # 10000 px trips Pillow's warning threshold, 50000 px its hard error; both are refusals.
    data = png_with_header(side, side)
    assert len(data) < 200
    started = time.perf_counter()
    err = refused(data, "decompression_bomb")
    assert time.perf_counter() - started < 1.0
    assert "3072" in err.message


# --- damaged files ---------------------------------------------------------------------------


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode(Image.effect_noise((400, 400), 80).convert("RGB"), "JPEG")
    err = refused(data[: len(data) // 2], "corrupt_image")
    assert "JPEG" in err.message


def test_damaged_png_data_is_corrupt() -> None:
    data = png_with_header(400, 400)  # valid header, far too little pixel data
    refused(data, "corrupt_image")


# --- orientation, modes, frames --------------------------------------------------------------


def test_exif_orientation_is_applied_and_removed() -> None:
    img = Image.new("RGB", (400, 600), "white")
    img.paste(Image.new("RGB", (40, 40), (255, 0, 0)), (0, 0))  # red in the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    result = ingest_image(encode(img, "JPEG", exif=exif), label=LABEL)
    assert (result.width, result.height) == (600, 400)
    out = reopen(result)
    assert out.size == (600, 400)
    red, green, blue = out.getpixel((580, 20))  # top-left turned clockwise lands top-right
    assert red > 200 and green < 60 and blue < 60
    assert_no_metadata(result)


def test_sides_are_measured_after_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    result = ingest_image(encode(picture((400, 3000)), "JPEG", exif=exif), label=LABEL)
    assert (result.width, result.height) == (3000, 400)


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (400, 400), (0, 255, 255, 0)), "JPEG")
    result = ingest_image(data, label=LABEL)
    out = reopen(result)
    assert (result.ext, out.mode) == ("jpg", "RGB")
    red, green, blue = out.getpixel((200, 200))
    assert red > 240 and green < 20 and blue < 20


def test_16_bit_png_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (512, 400))
    values = [0, 257, 32768, 65535]
    for x, value in enumerate(values):
        img.putpixel((x, 0), value)
    for x in range(512):  # a full-range ramp along the second row
        img.putpixel((x, 1), x * 128)
    result = ingest_image(encode(img, "PNG"), label=LABEL)
    out = reopen(result)
    assert out.mode == "L"
    assert [out.getpixel((x, 0)) for x in range(4)] == [0, 1, 128, 255]
    ramp = [out.getpixel((x, 1)) for x in range(512)]
    assert ramp == sorted(ramp)
    assert ramp[-1] == round(511 * 128 / 257)


def test_16_bit_tiff_is_scaled() -> None:
    img = Image.new("I;16", (400, 400), 65535)
    result = ingest_image(encode(img, "TIFF"), label=LABEL)
    out = reopen(result)
    assert (result.ext, out.mode, out.getpixel((10, 10))) == ("png", "L", 255)


def test_palette_with_transparency_becomes_rgba_png() -> None:
    img = Image.new("P", (400, 400), 1)
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.paste(0, (0, 0, 100, 100))
    result = ingest_image(encode(img, "PNG", transparency=0), label=LABEL)
    out = reopen(result)
    assert (result.ext, out.mode) == ("png", "RGBA")
    assert out.getpixel((10, 10))[3] == 0
    assert out.getpixel((300, 300)) == (0, 0, 255, 255)


@pytest.mark.parametrize(("mode", "expected"), [("LA", "RGBA"), ("1", "L"), ("L", "L")])
def test_other_modes_are_normalised(mode: str, expected: str) -> None:
    result = ingest_image(encode(picture(mode=mode), "PNG"), label=LABEL)
    assert reopen(result).mode == expected


def test_animated_webp_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (400, 400), colour) for colour in ("red", "blue", "lime")]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    result = ingest_image(data, label=LABEL)
    out = reopen(result)
    assert result.ext == "webp"
    assert getattr(out, "n_frames", 1) == 1
    assert out.getpixel((200, 200))[:3] == (255, 0, 0)


def test_multi_page_tiff_keeps_its_first_page() -> None:
    pages = [Image.new("RGB", (400, 400), colour) for colour in ("blue", "red")]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    out = reopen(ingest_image(data, label=LABEL))
    assert getattr(out, "n_frames", 1) == 1
    assert out.getpixel((200, 200)) == (0, 0, 255)


def test_mpo_counts_as_jpeg() -> None:
    frames = [picture(), picture().rotate(180)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = ingest_image(data, label=LABEL)
    assert (result.source_format, result.ext) == ("JPEG", "jpg")


# --- metadata is stripped --------------------------------------------------------------------


def test_huge_exif_block_is_stripped() -> None:
    marker = b"SECRET-COMMENT-"
    exif = Image.Exif()
    exif[0x010E] = "an image description"
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + marker * 4000  # UserComment, ~60 KB
    data = encode(picture(), "JPEG", exif=exif.tobytes())
    assert len(Image.open(io.BytesIO(data)).info["exif"]) > 55_000
    result = ingest_image(data, label=LABEL)
    assert marker not in result.data
    assert len(result.data) < len(data) - 50_000
    assert_no_metadata(result)


def test_icc_xmp_and_text_are_stripped() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "where this was taken")
    text.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>secret</x:xmpmeta>")
    png = encode(picture(), "PNG", icc_profile=icc, pnginfo=text)
    jpeg = encode(picture(), "JPEG", icc_profile=icc, xmp=b"<x:xmpmeta>secret</x:xmpmeta>")
    webp = encode(picture(), "WEBP", icc_profile=icc, xmp=b"<x:xmpmeta>secret</x:xmpmeta>")
    for data in (png, jpeg, webp):
        result = ingest_image(data, label=LABEL)
        assert b"secret" not in result.data
        assert_no_metadata(result)


def test_srgb_profile_keeps_colours() -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.new("RGBA", (400, 400), (10, 120, 200, 100))
    out = reopen(ingest_image(encode(img, "PNG", icc_profile=icc), label=LABEL))
    red, green, blue, alpha = out.getpixel((5, 5))
    assert abs(red - 10) <= 2 and abs(green - 120) <= 2 and abs(blue - 200) <= 2
    assert alpha == 100


def swapped_primaries_profile() -> bytes:
    """A minimal ICC v2 matrix/TRC profile whose red colorant is sRGB's green (and vice versa),
    so converting by the profile visibly changes the pixels and dropping it does not."""

    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    linear = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, 0x0100) + b"\0\0"
    tags = [
        (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", linear),
        (b"gTRC", linear),
        (b"bTRC", linear),
    ]
    start = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for signature, data in tags:
        table += signature + struct.pack(">II", start + len(body), len(data))
        body += data
    header = (
        struct.pack(">I", start + len(body))
        + b"\0" * 4
        + struct.pack(">I", 0x02100000)
        + b"mntrRGB XYZ "
        + b"\0" * 12
        + b"acsp"
        + b"\0" * 28
        + s15(0.9642)
        + s15(1.0)
        + s15(0.8249)
        + b"\0" * 48
    )
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_embedded_profile_is_baked_into_the_pixels(fmt: str) -> None:
    img = Image.new("RGB", (400, 400), (255, 0, 0))
    result = ingest_image(encode(img, fmt, icc_profile=swapped_primaries_profile()), label=LABEL)
    red, green, blue = reopen(result).getpixel((5, 5))
    assert green > 240 and red < 15 and blue < 15
    assert_no_metadata(result)


def test_unreadable_profile_is_dropped() -> None:
    img = Image.new("RGB", (400, 400), (10, 120, 200))
    result = ingest_image(encode(img, "PNG", icc_profile=b"not a profile" * 20), label=LABEL)
    assert reopen(result).getpixel((5, 5)) == (10, 120, 200)
    assert_no_metadata(result)


# --- thumbnails ------------------------------------------------------------------------------


def test_thumbnail_is_a_small_jpeg() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(encode(picture((3000, 400)), "JPEG"))))
    assert thumb.format == "JPEG"
    assert thumb.mode == "RGB"
    assert max(thumb.size) == 320
    assert thumb.size[1] in (42, 43)


def test_thumbnail_lays_alpha_on_white() -> None:
    img = Image.new("RGBA", (800, 800), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (400, 0, 800, 800))
    thumb = Image.open(io.BytesIO(make_thumbnail(encode(img, "PNG"), max_side=100)))
    assert thumb.size == (100, 100)
    assert all(channel > 245 for channel in thumb.getpixel((10, 50)))
    red, green, blue = thumb.getpixel((90, 50))
    assert blue > 200 and red < 40 and green < 40


def test_thumbnail_of_small_image_is_not_enlarged() -> None:
    thumb = Image.open(io.BytesIO(make_thumbnail(encode(picture((200, 100), "L"), "PNG"))))
    assert thumb.size == (200, 100)
    assert thumb.mode == "RGB"
