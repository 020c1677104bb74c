"""Ingest at the door: every uploaded image is checked, decoded and re-encoded before it is kept.

An upload is never stored as sent. Its format is decided from its bytes alone (the name and the
declared content type are the browser's word, not ours), its declared size is checked before any
pixel is decoded, and it is then decoded in full and written out again by Pillow. Re-encoding is
the "content disarm": whatever rode along in the file (EXIF with GPS positions, XMP, ICC
profiles, comments, trailing bytes, a polyglot payload) does not survive, and what the studio
stores and forwards to the provider is a plain picture it has proven it can read.

Choices worth knowing:

* Multi-frame files (animated WebP, multi-page TIFF, JPEG MPO) keep their first frame only. An
  edit model takes one picture per input; picking a frame silently is kinder than refusing an
  animated sticker, and the first frame is what every viewer shows as the file's thumbnail.
* The output format follows the source so nothing is lost twice: JPEG stays JPEG (quality 95,
  one generation of loss on a photo that was already lossy), WebP becomes lossless WebP, and
  PNG, BMP and TIFF (and anything with alpha) become PNG.
* EXIF orientation is applied to the pixels before the size limits are measured, since the
  rotated picture is the one the person sees and the one the model gets.
* An embedded ICC profile is used to convert the pixels to sRGB before the profile is dropped,
  so a wide-gamut phone photo keeps its colours; an unreadable profile is simply dropped.
* Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``) is a process-wide global that other code
  (the worker's check of results) relies on, so it is left alone. Ingest enforces its own,
  tighter ceiling of ``MAX_PIXELS`` from the header instead, and Pillow's guard, turned into an
  error here, still stops absurd headers inside ``Image.open``.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from app.errors import InputError

ALLOWED_FORMATS: dict[str, str] = {
    "JPEG": "jpg",
    "PNG": "png",
    "BMP": "bmp",
    "WEBP": "webp",
    "TIFF": "tiff",
}
MIN_SIDE = 384
MAX_SIDE = 3072
MAX_PIXELS = MAX_SIDE * MAX_SIDE
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_IMAGES = 3

_ALLOWED_TEXT = "JPG/JPEG, PNG, BMP, WEBP, TIFF"
_MB = 1024 * 1024

# Pillow hands some files to a sibling plugin of the one we allowed (a JPEG with an MPO index
# comes back as "MPO"); they are still that format as far as the person is concerned.
_FORMAT_ALIASES: dict[str, str] = {"MPO": "JPEG"}

# What Pillow's decoders raise on truncated or malformed data. Listed rather than a bare
# ``except Exception`` so a bug in this module still surfaces as a bug, not as "corrupt image".
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    struct.error,
)
_BOMB_ERRORS: tuple[type[BaseException], ...] = (
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

# 16-bit grey to 8-bit by scaling (65535 -> 255, rounded), not by clipping at 255.
_LUT_16_TO_8: list[int] = [(v * 255 + 32767) // 65535 for v in range(65536)]

# Effort settings measured on a 3072x3072 photo-like image: the defaults cost ~5 s (PNG) and
# ~17 s (lossless WebP) per image in the request path; these cost ~1.3 s each for files 5-15 %
# larger. Lossless either way, so only size is traded.
_PNG_OPTIONS: dict[str, int] = {"compress_level": 3}
_WEBP_OPTIONS: dict[str, int | bool] = {"lossless": True, "method": 0, "quality": 0}
_JPEG_OPTIONS: dict[str, int] = {"quality": 95}

_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class IngestedImage:
    """An upload after disarm: only these bytes are ever stored or sent on."""

    data: bytes
    sha256: str
    ext: str
    content_type: str
    width: int
    height: int
    source_format: str


def ingest_image(
    data: bytes | BinaryIO, *, label: str, max_bytes: int = MAX_FILE_BYTES
) -> IngestedImage:
    """Accept one uploaded image or refuse it with an :class:`InputError` that names ``label``.

    CPU-bound (about a second for a 3072x3072 image), so async callers should run it in a thread.
    """
    raw = _read_capped(data, label, max_bytes)
    with warnings.catch_warnings():
        # Only the bomb warning: other Pillow warnings (odd EXIF, say) are no reason to refuse.
        # The filter list is process-wide, so concurrent ingests can briefly undo each other's
        # filter; that is safe because _check_sides refuses any such header right after.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with _open(raw, label) as img:
            source_format = _source_format(img, raw, label)
            _check_sides(img.width, img.height, label)
            picture = _decode(img, source_format, label)
    # The sides are the same pair after a quarter turn, but measure what will actually be kept.
    _check_sides(picture.width, picture.height, label)
    out, ext, content_type = _encode(picture, source_format)
    return IngestedImage(
        data=out,
        sha256=hashlib.sha256(out).hexdigest(),
        ext=ext,
        content_type=content_type,
        width=picture.width,
        height=picture.height,
        source_format=source_format,
    )


def make_thumbnail(data: bytes, max_side: int = 320) -> bytes:
    """A small JPEG for the history list, from bytes that already passed a decode check.

    Alpha is laid on white because JPEG has none and a black backdrop (the naive conversion)
    makes transparent cut-outs look broken.
    """
    if max_side < 1:
        raise ValueError("max_side must be at least 1")
    with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as img:
        # For JPEG, let the decoder scale down by a power of two; twice the target keeps the
        # final resample sharp.
        img.draft("RGB", (max_side * 2, max_side * 2))
        img.load()
        picture = ImageOps.exif_transpose(img)
        icc = img.info.get("icc_profile")
        if isinstance(icc, bytes) and icc:
            picture = _to_srgb(picture, icc)
        picture = _normalise_mode(picture, "the image")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if picture.mode == "RGBA":
        flat = Image.new("RGB", picture.size, "white")
        flat.paste(picture, mask=picture.getchannel("A"))
    else:
        flat = _bare(picture.convert("RGB"))
    buf = io.BytesIO()
    flat.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _read_capped(data: bytes | BinaryIO, label: str, max_bytes: int) -> bytes:
    """Read no more than one byte past the limit, so an endless stream cannot fill memory."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise _too_large(label, max_bytes, len(raw))
    else:
        start = _position(data)
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = data.read(remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        raw = b"".join(chunks)
        if len(raw) > max_bytes:
            raise _too_large(label, max_bytes, _stream_size(data, start))
    if not raw:
        raise InputError(
            "empty_file",
            f"{label} is empty (0 bytes); send a {_ALLOWED_TEXT} image "
            f"of at most {_size_text(max_bytes)}.",
        )
    return raw


def _position(stream: BinaryIO) -> int | None:
    try:
        return stream.tell() if stream.seekable() else None
    except (OSError, ValueError, AttributeError):
        return None


def _stream_size(stream: BinaryIO, start: int | None) -> int | None:
    """The full size of an over-long upload, for the message, when the stream can tell it cheaply
    (a spooled upload can); the rest of it is never read."""
    if start is None:
        return None
    try:
        return stream.seek(0, io.SEEK_END) - start
    except (OSError, ValueError, AttributeError):
        return None


def _too_large(label: str, max_bytes: int, size: int | None) -> InputError:
    limit = _size_text(max_bytes)
    what = f"is larger than {limit}" if size is None else f"is {_size_text(size)}"
    return InputError(
        "file_too_large",
        f"{label} {what}; each image may be at most {limit}.",
        413,
    )


def _open(raw: bytes, label: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(raw), formats=list(ALLOWED_FORMATS))
    except UnidentifiedImageError as exc:
        raise _unsupported(label, _sniff(raw)) from exc
    except _BOMB_ERRORS as exc:
        raise _bomb(label) from exc
    except _DECODE_ERRORS as exc:
        # A plugin recognised the signature and then choked on the header.
        raise _corrupt(label, None) from exc


def _source_format(img: Image.Image, raw: bytes, label: str) -> str:
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "")
    if fmt not in ALLOWED_FORMATS:
        raise _unsupported(label, _sniff(raw))
    return fmt


def _check_sides(width: int, height: int, label: str) -> None:
    # The area test is implied by the side test today; it is spelled out so that widening one
    # side limit cannot quietly widen the pixel budget too.
    if (
        MIN_SIDE <= width <= MAX_SIDE
        and MIN_SIDE <= height <= MAX_SIDE
        and width * height <= MAX_PIXELS
    ):
        return
    raise InputError(
        "bad_dimensions",
        f"{label} is {width}x{height} px; each side must be between {MIN_SIDE} and {MAX_SIDE} px.",
    )


def _decode(img: Image.Image, source_format: str, label: str) -> Image.Image:
    """Decode the first frame in full and bring it to a mode the encoders take as-is."""
    icc = img.info.get("icc_profile")
    try:
        img.load()
        upright = ImageOps.exif_transpose(img)
        if isinstance(icc, bytes) and icc:
            upright = _to_srgb(upright, icc)
        return _normalise_mode(upright, label)
    except _BOMB_ERRORS as exc:
        raise _bomb(label) from exc
    except _DECODE_ERRORS as exc:
        raise _corrupt(label, source_format) from exc


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """Bake the embedded profile into the pixels, since the profile itself is about to go."""
    if img.mode not in ("RGB", "RGBA", "CMYK"):
        return img
    out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(img, source, _SRGB, outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        # A broken or mismatched profile (a grey profile on RGB pixels, say) is dropped like
        # any other metadata; the pixels are used as they are.
        return img
    return converted if converted is not None else img


def _normalise_mode(img: Image.Image, label: str) -> Image.Image:
    """Reduce Pillow's many modes to L, RGB or RGBA, the three every output encoder accepts."""
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        return img.convert("I").point(_LUT_16_TO_8, "L")
    if mode == "1":
        return img.convert("L")
    if img.has_transparency_data:
        return img if mode == "RGBA" else img.convert("RGBA")
    if mode in ("L", "RGB"):
        return img
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InputError(
            "unsupported_color_mode",
            f"{label} uses the {mode} colour mode, which the studio cannot convert; "
            "save it as an 8-bit RGB or greyscale image and try again.",
        ) from exc


def _encode(img: Image.Image, source_format: str) -> tuple[bytes, str, str]:
    bare = _bare(img)
    buf = io.BytesIO()
    if source_format == "WEBP":
        bare.save(buf, "WEBP", **_WEBP_OPTIONS)
        return buf.getvalue(), "webp", "image/webp"
    if source_format == "JPEG" and bare.mode != "RGBA":
        bare.save(buf, "JPEG", **_JPEG_OPTIONS)
        return buf.getvalue(), "jpg", "image/jpeg"
    bare.save(buf, "PNG", **_PNG_OPTIONS)
    return buf.getvalue(), "png", "image/png"


def _bare(img: Image.Image) -> Image.Image:
    """Pixels only, on a fresh image, so no encoder can pick up EXIF, ICC or text from ``info``."""
    bare = Image.new(img.mode, img.size)
    bare.paste(img)
    return bare


def _sniff(raw: bytes) -> str | None:
    """Name a few formats people commonly upload by mistake, only to make the refusal clearer."""
    head = raw[:512]
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "a HEIC image"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "an AVIF image"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in text:
        return "an SVG"
    if text.startswith((b"<!doctype html", b"<html")) or b"<html" in text:
        return "an HTML page"
    return None


def _unsupported(label: str, what: str | None) -> InputError:
    described = f"is {what}" if what else "is not an image in a format the studio reads"
    return InputError(
        "unsupported_format",
        f"{label} {described}; allowed formats are {_ALLOWED_TEXT}.",
        415,
    )


def _bomb(label: str) -> InputError:
    return InputError(
        "decompression_bomb",
        f"{label} declares a picture far larger than any allowed image (a possible "
        f"decompression bomb) and was refused without decoding; each side must be between "
        f"{MIN_SIDE} and {MAX_SIDE} px.",
    )


def _corrupt(label: str, source_format: str | None) -> InputError:
    kind = f"a {source_format} image" if source_format else "an image"
    return InputError(
        "corrupt_image",
        f"{label} looks like {kind} but could not be decoded: the file is truncated or "
        f"damaged. Save or export it again and retry; allowed formats are {_ALLOWED_TEXT}.",
    )


def _size_text(size: int) -> str:
    """Sizes as people read them. Rounded up, so a file one byte over 10 MB never reads as
    "10.0 MB" next to a 10 MB limit."""
    if size >= _MB:
        if size % _MB == 0:
            return f"{size // _MB} MB"
        return f"{math.ceil(size * 10 / _MB) / 10:.1f} MB"
    if size >= 1024:
        return f"{math.ceil(size * 10 / 1024) / 10:.1f} KB"
    return f"{size} bytes"
