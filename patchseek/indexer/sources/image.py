"""Images through Pillow: EXIF orientation, CMYK, 16-bit, grayscale and alpha normalised to RGB."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from patchseek.errors import DocumentReadError, UnsupportedMediaError
from patchseek.types import SourceUnit

# Refuse decompression bombs outright rather than allocating gigabytes; a 200 MP image is already
# far beyond any page a scanner makes.
MAX_DECODE_PIXELS = 200_000_000


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white.
        image = image.point(lambda v: v * (255 / 65535)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def read_image(data: bytes, *, max_side: int = 4096) -> SourceUnit:
    """Decode one image into a ``SourceUnit`` of kind ``image`` (downscaled to ``max_side``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_DECODE_PIXELS
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_DECODE_PIXELS:
                raise DocumentReadError(
                    f"the image is {image.width}x{image.height} pixels, over the {MAX_DECODE_PIXELS} limit"
                )
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF / multi-page TIFF: the first frame stands for the image
            image.load()
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaError("the image format is not recognised; use PNG, JPEG or WebP") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DocumentReadError(f"the image is too large to decode safely ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DocumentReadError(f"the image cannot be decoded ({exc}); it may be truncated") from exc
    image = ImageOps.exif_transpose(image) or image
    image = to_rgb(image)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return SourceUnit(kind="image", index=0, image=image, words=None)
