"""Images from users, decoded safely: the size is read from the header before any pixel is decoded.

A 1 MB PNG can declare 30000x30000 pixels; decoding it first and checking afterwards costs gigabytes
(a decompression bomb). Every image that comes from outside (the edge's `/v1/detect`, the API's
previews, dataset ingest) goes through `decode_image` or `read_image`:

1. Pillow's parsers of `FORMATS` (and no other) read only the header to learn the format and the
   dimensions; anything that is not one of `FORMATS` or is larger than `max_pixels` is refused with
   an `ImageError` before a single pixel is decoded.
2. Only then OpenCV decodes, at most `MAX_CONCURRENT_DECODES` images at a time per process (each may
   take up to 192 MiB at the largest size accepted). OpenCV's own limit (`OPENCV_IO_MAX_IMAGE_PIXELS`)
   is set to the same figure as a second guard, should a file's header and its pixel data disagree.

`ImageError.status` is the HTTP status a server answers with: 413 too large, 415 not a supported
image, 400 empty or corrupt.
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image

from visioninapp import MAX_IMAGE_PIXELS  # also set as OpenCV's own limit, before cv2 loads

FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP")  # what we accept (Pillow's names)
MAX_CONCURRENT_DECODES = 4  # per process: bounds what decoding at the largest size can hold at once


__all__ = [
    "FORMATS",
    "MAX_CONCURRENT_DECODES",
    "MAX_IMAGE_PIXELS",
    "ImageError",
    "decode_image",
    "image_header",
    "read_image",
]

log = logging.getLogger(__name__)

_ACCEPTED = "send a JPEG, PNG, WebP, TIFF or BMP"
# A JPEG with extra pictures (phone cameras) is opened as JPEG by Pillow: OpenCV decodes the first.
_ALIASES = {"MPO": "JPEG"}
_decodes = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)


class ImageError(ValueError):
    """The image cannot be used; the message says why.

    `too_large`: a size problem (HTTP 413); `unsupported`: not one of `FORMATS`, or not an image at all
    (415); otherwise the image is empty or corrupt (400).
    """

    def __init__(self, message: str, too_large: bool = False, unsupported: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large
        self.unsupported = unsupported

    @property
    def status(self) -> int:
        return 413 if self.too_large else 415 if self.unsupported else 400


def _too_large(described: str, max_pixels: int) -> ImageError:
    side = int(max_pixels**0.5)
    return ImageError(
        f"image too large: {described}, at most {max_pixels:,} pixels ({side}x{side}); scale it down",
        too_large=True,
    )


def _pillow_header(stream: BinaryIO) -> tuple[str, int, int]:
    """(format, width, height) as Pillow's opener of one of `FORMATS` reads them from the header.

    What `Image.open(stream, formats=FORMATS)` does, minus its own pixel limit (judged by the caller)
    and without going through `Image.open` itself, which other libraries patch (ultralytics retries an
    unidentified file after installing a HEIF plugin with pip).
    """
    Image.init()  # every plugin's opener registered, once
    prefix = stream.read(16)
    recognised = None
    for name in FORMATS:
        factory, accept = Image.OPEN[name]
        matched = accept is None or accept(prefix)
        if not matched or isinstance(matched, str):  # a str: "recognised, but support is missing"
            continue
        recognised = name
        stream.seek(0)
        try:
            image = factory(stream, "")
        except Image.DecompressionBombError:  # a plugin that applies Pillow's own limit (WebP) itself
            raise
        except (OSError, ValueError, EOFError, SyntaxError, IndexError, TypeError, struct.error):
            continue  # not this format after all, or a broken header
        try:
            return _ALIASES.get(image.format or "", image.format or ""), image.size[0], image.size[1]
        finally:
            image.close()
    if recognised:
        raise ImageError(f"cannot read the image: its {recognised} header is corrupt or truncated")
    raise ImageError(f"cannot read the image: not a supported image; {_ACCEPTED}", unsupported=True)


def image_header(source: bytes | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; ImageError when unsupported or too large."""
    if isinstance(source, bytes | bytearray | memoryview) and not len(source):
        raise ImageError(f"empty image: {_ACCEPTED}")
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            kind, width, height = _pillow_header(io.BytesIO(source))
        else:
            with open(source, "rb") as stream:
                kind, width, height = _pillow_header(stream)
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise _too_large(f"its header declares over {limit:,} pixels", max_pixels) from None
    except OSError as error:  # the file itself: missing, unreadable
        raise ImageError(f"cannot read the image: {error.strerror or error}") from None
    if kind not in FORMATS:
        raise ImageError(f"unsupported image format {kind or 'unknown'}: {_ACCEPTED}", unsupported=True)
    if width <= 0 or height <= 0:
        raise ImageError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise _too_large(f"{width}x{height} is {width * height:,} pixels", max_pixels)
    return kind, width, height


def _checked(image: np.ndarray | None, max_pixels: int, name: str = "") -> np.ndarray:
    if image is None or image.size == 0:
        raise ImageError(f"{name}cannot decode the image: it is corrupt")
    if image.shape[0] * image.shape[1] > max_pixels:  # the header lied; OpenCV's guard should have held
        raise _too_large(f"{image.shape[1]}x{image.shape[0]} decoded", max_pixels)
    return image


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Bytes of an image to a BGR array (EXIF orientation applied), its size checked from the header first."""
    image_header(data, max_pixels)
    with _decodes:
        try:
            image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:  # OpenCV's own size guard, or a decoder that gave up
            image = None
    return _checked(image, max_pixels)


def read_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file to a BGR array (EXIF orientation applied), its size checked from the header first."""
    try:
        image_header(path, max_pixels)
    except ImageError as error:
        raise ImageError(f"{path.name}: {error}", error.too_large, error.unsupported) from None
    with _decodes:
        try:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
    return _checked(image, max_pixels, f"{path.name}: ")
