"""Images in and out of HTTP bodies: data URLs and uploaded bytes in (checked before they are
decoded), base64 PNGs and markdown image parts out."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

from ..errors import ImageError
from ..images import load_image

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # far above any model input (384²), a bounded decode per request
_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)", re.DOTALL)


class ImageTooLargeError(ImageError):
    """An image whose pixels exceed the server's limit (HTTP 413, not 400)."""


def image_from_data_url(url: str, name: str, max_pixels: int) -> Image.Image:
    """A `data:image/...;base64,...` URL -> an RGB image; remote URLs are refused: the server fetches nothing."""
    if not isinstance(url, str):
        raise ImageError(f"{name}: the image URL must be a string, got {type(url).__name__}")
    match = _DATA_URL.fullmatch(url.strip())
    if match is None:
        scheme = url.split(":", 1)[0] if ":" in url else "no scheme"
        raise ImageError(
            f"{name}: only data URLs (data:image/png;base64,...) are accepted, got a {scheme!r} URL; "
            "the server fetches nothing: send the image's bytes inline"
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"{name}: the data URL's base64 payload is malformed ({e})") from e
    return image_from_bytes(data, name, max_pixels)


def image_from_bytes(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Encoded image bytes -> a fully decoded, upright RGB image; the pixel count is checked from
    the header before anything is decoded."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); send a PNG, JPEG, WebP or another common image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{name} is too large to decode safely; at most {max_pixels:,} pixels") from e
    except Exception as e:  # PIL raises many types for unreadable data
        raise ImageError(f"cannot read {name}: not a supported image ({type(e).__name__}: {e})") from e
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} has {width}x{height} = {width * height:,} pixels; at most {max_pixels:,} are accepted"
        )
    image.filename = name  # load_image names the image by it in its messages
    return load_image(image, max_pixels)


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def markdown_image(image: Image.Image, number: int) -> str:
    """An image as a markdown image part with a PNG data URL: how interleaved answers carry images."""
    return f"![image {number}](data:image/png;base64,{png_base64(image)})"
