"""Images through Pillow: EXIF orientation, CMYK, 16-bit, grayscale and alpha normalised to RGB."""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from patchseek.errors import DocumentReadError, ImageTooLargeError, UnsupportedMediaError
from patchseek.types import SourceUnit

# Decoded pixels (width * height) an image may have. Checked on the header, before anything is decoded:
# an 800 KB PNG can declare 14000 x 14000 pixels, and decoding it plus the RGB copies took 5 GB. 40 MP
# covers scans and camera photos (a JPEG above it is decoded at 1/2, 1/4 or 1/8 scale instead, which
# libjpeg does without the full-size bitmap); a PNG, TIFF, GIF, BMP or WebP above it is refused.
MAX_DECODE_PIXELS = 40_000_000


# Modes Pillow resamples in place with LANCZOS; others (palette, 16-bit) are converted first.
_RESIZABLE = ("RGB", "RGBA", "L", "LA", "CMYK", "RGBX")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.point(lambda v: v * (255 / 65535)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _too_large(width: int, height: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"the image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels} "
        "(PATCHSEEK_MAX_DECODE_PIXELS); downscale it or save it as JPEG"
    )


def _fit_budget(image: Image.Image, max_pixels: int) -> None:
    """Make ``image`` (opened, not loaded) decode to at most ``max_pixels``, or raise.

    Only JPEG can be decoded smaller than it is stored (libjpeg's DCT scaling by 1/2, 1/4, 1/8), so
    ``draft`` is used for it; any other format over the budget is refused before it is decoded.
    """
    width, height = image.size
    if width * height <= max_pixels:
        return
    if image.format == "JPEG":
        for k in (2, 4, 8):
            if math.ceil(width / k) * math.ceil(height / k) <= max_pixels:
                # draft picks the largest scale s in (1, 2, 4, 8) with size // requested >= s.
                image.draft(None, (width // k, height // k))
                break
        if image.width * image.height <= max_pixels:
            return
    raise _too_large(width, height, max_pixels)


def read_image(data: bytes, *, max_side: int = 4096, max_pixels: int = MAX_DECODE_PIXELS) -> SourceUnit:
    """Decode one image into a ``SourceUnit`` of kind ``image`` (downscaled to ``max_side``).

    An image that would decode to more than ``max_pixels`` pixels raises ``ImageTooLargeError``
    (``image_too_large``, 413) before any pixel is decoded; a JPEG is decoded at a reduced scale instead
    when that fits.
    """
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning (at 89 MP) is superseded by ``max_pixels``, checked below; its
            # DecompressionBombError (at 179 MP) still stops anything larger at open time.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            _fit_budget(image, max_pixels)
            if getattr(image, "is_animated", False):
                image.seek(0)  # animated GIF / multi-page TIFF: the first frame stands for the image
            image.load()
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaError("the image format is not recognised; use PNG, JPEG or WebP") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"the image is too large to decode safely ({exc}); downscale it or save it as JPEG"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DocumentReadError(f"the image cannot be decoded ({exc}); it may be truncated") from exc
    if max(image.size) > max_side and image.mode in _RESIZABLE:
        # Shrink before the copies that orientation and RGB conversion make, not after.
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    image = ImageOps.exif_transpose(image) or image
    image = to_rgb(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return SourceUnit(kind="image", index=0, image=image, words=None)
