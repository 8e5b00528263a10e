"""Reading user images safely and turning them into model tensors.

Every failure (missing file, truncated data, decompression bomb, zero-size or exotic mode) is an
`ImageError` that names the image and the accepted range, raised before any tensor is built.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from .errors import ImageError

MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000: far above any model input, far below a decompression bomb
SHOWN_SIDE = 192  # smaller images (the default model draws 32 px) are shown enlarged to about this size


def load_image(image: str | os.PathLike | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open a path or check a PIL image; return a fully decoded 8-bit RGB image, turned upright
    by its EXIF orientation (as transformers' load_image)."""
    if isinstance(image, Image.Image):
        img, name = image, getattr(image, "filename", None) or "<PIL image>"
    else:
        path = _image_path(image)
        name = str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageError(f"image {name} is too large to decode safely ({e}); at most {max_pixels:,} pixels") from e
        except Exception as e:  # PIL raises many types for unreadable files
            raise ImageError(f"cannot read image {name}: not a supported image file ({type(e).__name__}: {e})") from e
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {name} has no pixels ({width}x{height}); need at least 1x1")
    if width * height > max_pixels:
        raise ImageError(
            f"image {name} has {width}x{height} = {width * height:,} pixels; at most {max_pixels:,} are accepted"
        )
    try:
        img.load()
    except Exception as e:
        raise ImageError(f"cannot decode image {name}: the file is truncated or corrupt ({e})") from e
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # a photo stored sideways: upright, as viewers show it
        img = ImageOps.exif_transpose(img)
    return to_rgb(img, name)


def display_factor(size: tuple[int, int], side: int = SHOWN_SIDE) -> int:
    """The whole factor that shows an image of this size at about `side` pixels (1: large enough as it is);
    whole, so that each pixel becomes a sharp square."""
    return max(1, side // max(size))


def _image_path(image) -> Path:
    """An existing image file's path; other types (bytes, arrays, tensors, open files) are refused
    by name, since PIL would read them differently than a user expects or not at all."""
    if not isinstance(image, (str, os.PathLike)):
        raise ImageError(
            f"an image must be a file path (str or os.PathLike) or a PIL.Image.Image, got {type(image).__name__}"
        )
    if os.fspath(image) in ("", b""):
        raise ImageError("the image path is empty; give a file path or a PIL.Image.Image")
    path = Path(os.fsdecode(image))
    if path.is_dir():
        raise ImageError(f"image path {path} is a directory; give an image file")
    if not path.exists():
        raise ImageError(f"image file not found: {path}")
    if not path.is_file():
        raise ImageError(f"image path {path} is not a regular file; give an image file")
    return path


def _finite_range(arr: np.ndarray, name: str) -> np.ndarray:
    """NaN/inf pixels (no-data in scientific TIFFs) become the lowest/highest finite value, so that
    they do not turn the whole rescaled image black."""
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageError(f"image {name} has no finite pixel values (all NaN or infinite); need at least one")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    return np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)


def _grey_levels(arr: np.ndarray, mode: str) -> np.ndarray:
    """Wide grey levels -> 0..255 by the full scale their values fit: 16-bit for I;16, 8- or 16-bit
    for 32-bit integers (PIL reads 16-bit PNGs and converted L images as I), [0, 1], 8- or 16-bit
    for floats; values fitting none (scientific data) are stretched from their min to their max."""
    scales = (65535,) if mode.startswith("I;16") else (255, 65535) if mode == "I" else (1, 255, 65535)
    lo, hi = float(arr.min()), float(arr.max())
    scale = next((s for s in scales if lo >= 0 and hi <= s), None)
    if scale is not None:
        arr = arr / scale * 255.0
    elif hi > lo:
        arr = (arr - lo) / (hi - lo) * 255.0
    return np.clip(arr, 0, 255).round().astype(np.uint8)


def to_rgb(img: Image.Image, name: str = "<PIL image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white, 16-bit/float levels scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = _finite_range(np.asarray(img, dtype=np.float64), name)
        return Image.fromarray(_grey_levels(arr, img.mode), "L").convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except Exception as e:
        raise ImageError(f"image {name} has mode {img.mode!r} that cannot be converted to RGB") from e


def expand_to_square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad the short side symmetrically so the image is square (Janus's expand2square)."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), background)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas


def understanding_pixels(
    img: Image.Image,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    do_normalize: bool = True,
    min_size: int = 14,
) -> torch.Tensor:
    """Janus understanding preprocessing: long side to `size` (bicubic; sides truncated, at least
    `min_size`), pad to square with the mean colour, scale to [0, 1], normalise unless told not
    to (Janus-1.3B). Returns (3, size, size) float32."""
    width, height = img.size
    longest = max(width, height)
    new_size = (max(int(width / longest * size), min_size), max(int(height / longest * size), min_size))
    img = img.resize(new_size, Image.Resampling.BICUBIC)
    img = expand_to_square(img, tuple(int(m * 255) for m in mean))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    if do_normalize:
        x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x


def generation_pixels(img: Image.Image, size: int) -> torch.Tensor:
    """VQ input: centre-crop to square, resize to `size`, scale to [-1, 1]. Returns (3, size, size)."""
    img = ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1).contiguous()


def pixels_to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """Decoded VQ output in [-1, 1], (B, 3, H, W) -> PIL images (clip and truncate, as Janus's scripts)."""
    arr = ((pixels.detach().float() + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy(), "RGB") for a in arr]
