"""Images from users, decoded safely: the size is read from the header before any pixel is decoded.

A 1 MB PNG can declare 30000x30000 pixels; decoding it first and checking afterwards costs gigabytes
(a decompression bomb). Every image that comes from outside (the edge's `/v1/detect`, the API's
previews, dataset ingest) goes through `decode_image` or `read_image`: Pillow reads only the header
to learn the format and the dimensions, anything that is not one of `FORMATS` or is larger than
`max_pixels` is refused, and only then OpenCV decodes. OpenCV's own limit
(`OPENCV_IO_MAX_IMAGE_PIXELS`) is set to the same figure as a second guard.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

MAX_IMAGE_PIXELS = 8192 * 8192  # a 64-megapixel frame: 192 MiB decoded (BGR)
FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")  # what we accept (Pillow's names)

# OpenCV reads this once, at its first decode: set it before anything here decodes.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = ["FORMATS", "MAX_IMAGE_PIXELS", "ImageError", "decode_image", "image_header", "read_image"]


class ImageError(ValueError):
    """The image cannot be used; the message says why (and `too_large` says it is a size problem)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def image_header(source: bytes | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; ImageError when unsupported or too large."""
    if isinstance(source, bytes) and not source:
        raise ImageError("empty image: send a JPEG, PNG, WebP, TIFF or BMP")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                kind, (width, height) = image.format or "", image.size
    except Image.DecompressionBombError:
        raise ImageError(
            f"image too large: its header declares over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels, at "
            f"most {max_pixels:,} (8192x8192); scale it down",
            too_large=True,
        ) from None
    except (OSError, ValueError, SyntaxError):  # Pillow's "cannot identify" and broken headers
        raise ImageError(
            "cannot read the image: not a JPEG, PNG, WebP, TIFF or BMP, or its header is corrupt"
        ) from None
    if kind not in FORMATS:
        raise ImageError(f"unsupported image format {kind or 'unknown'}: send a JPEG, PNG, WebP, TIFF or BMP")
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"image too large: {width}x{height} is {width * height:,} pixels, at most {max_pixels:,} "
            "(8192x8192); scale it down",
            too_large=True,
        )
    return kind, width, height


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Bytes of an image to a BGR array, its size checked from the header first."""
    image_header(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError("cannot decode the image: it is corrupt")
    return image


def read_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file to a BGR array (EXIF orientation applied), its size checked from the header first."""
    image_header(path, max_pixels)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise ImageError(f"{path.name}: cannot decode the image: it is corrupt")
    return image
