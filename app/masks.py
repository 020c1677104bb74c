"""Mask-guided local edits: the mask at the door, and the composite after the edit.

A mask is a greyscale PNG the size of the first image: white = edit, black = keep. Where a
provider cannot take a mask (EvoLink's and DashScope's qwen-image-edit), the studio still honours
it: the provider edits the whole image, and the result is laid back onto the original only inside
the mask. The soft edge is feathered *inward*, so every pixel outside the mask stays exactly as it
was, and pixels well inside come from the result unchanged.
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

from PIL import Image, ImageChops, ImageFilter

from app.errors import InputError
from app.images import MAX_FILE_BYTES, IngestedImage, ingest_image


def ingest_mask(data: bytes | BinaryIO, *, width: int, height: int) -> IngestedImage:
    """Check a mask against the first image and keep it as an 8-bit greyscale PNG."""
    label = "the mask"
    # Same size as the first image, so within the side limits ingest enforces.
    image = ingest_image(data, label=label, max_bytes=MAX_FILE_BYTES)
    if image.source_format != "PNG":
        raise InputError(
            "invalid_mask",
            f"The mask is a {image.source_format} file; it must be a greyscale PNG.",
        )
    if (image.width, image.height) != (width, height):
        raise InputError(
            "invalid_mask",
            f"The mask is {image.width}×{image.height} px; it must be the size of the first "
            f"image, {width}×{height} px.",
        )
    with Image.open(io.BytesIO(image.data)) as im:
        grey = _to_grey(im)
    if grey.getextrema()[1] == 0:
        raise InputError(
            "invalid_mask", "The mask is all black: paint (white) where the image should change."
        )
    out = io.BytesIO()
    grey.save(out, "PNG", compress_level=6)
    png = out.getvalue()
    return IngestedImage(
        data=png,
        sha256=hashlib.sha256(png).hexdigest(),
        ext="png",
        content_type="image/png",
        width=width,
        height=height,
        source_format="PNG",
    )


def _to_grey(im: Image.Image) -> Image.Image:
    if im.mode in ("RGBA", "LA"):
        # Painted strokes on a transparent canvas: opacity is the mask.
        alpha = im.getchannel("A")
        if alpha.getextrema()[0] < 255:
            return ImageChops.multiply(im.convert("L"), alpha)
    return im.convert("L")


def feather_radius(width: int, height: int) -> float:
    return max(2.0, min(width, height) / 150)


def composite(original: bytes, result: bytes, mask: bytes) -> bytes:
    """The result inside the mask, the original outside it, blended over a soft inner edge."""
    with (
        Image.open(io.BytesIO(original)) as base_im,
        Image.open(io.BytesIO(result)) as result_im,
        Image.open(io.BytesIO(mask)) as mask_im,
    ):
        has_alpha = "A" in base_im.getbands()
        mode = "RGBA" if has_alpha else "RGB"
        base = base_im.convert(mode)
        edited = result_im.convert(mode)
        if edited.size != base.size:
            edited = edited.resize(base.size, Image.Resampling.LANCZOS)
        hard = mask_im.convert("L")
        soft = hard.filter(ImageFilter.GaussianBlur(feather_radius(*base.size)))
        # Inward only: never more than the painted mask, so outside stays exactly the original.
        alpha = ImageChops.darker(soft, hard)
        merged = Image.composite(edited, base, alpha)
    out = io.BytesIO()
    merged.save(out, "PNG", compress_level=3)
    return out.getvalue()
