"""Task images decoded once, upright: which formats are read, kept or re-encoded.

Images are decoded once (Pillow, a fixed list of raster formats, ``Image.MAX_IMAGE_PIXELS`` as the
decompression-bomb limit; a JPEG kept as it is decodes at 1/8 scale, which still reads and checks
all of its compressed data), EXIF orientation (tag 0x0112, EXIF 2.32) is applied, and an image
that needs turning or is not in a format Ultralytics reads is re-encoded (JPEG quality 95, or
PNG). ``ImageCodec`` is this module's side of ``media_store.Codec``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

from PIL import Image, ImageOps, UnidentifiedImageError

from labelloop.labelstudio.media_store import Settled
from labelloop.labelstudio.media_types import MediaError

#: Formats Pillow may open (JPEG includes MPO; never EPS, which runs Ghostscript).
OPEN_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: Formats stored as downloaded (what Ultralytics reads), with the cache file extension.
KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}
EXIF_ORIENTATION = 0x0112
#: Cache file extensions, in the order a lookup tries them.
CACHE_EXTS = ("jpg", "png", "webp", "bmp", "tif")


class ImageCodec:
    """Images in the cache: ``<key>.<ext>`` with ``ext`` one of ``CACHE_EXTS``, always a whole,
    valid, upright image (``media_store.Codec``)."""

    def find(self, base: str) -> tuple[Path, int, int] | None:
        """The cached image ``<base>.<ext>`` and its (width, height) in pixels, read from its
        header; None when absent or no longer decodable (then it is fetched again and replaced)."""
        for ext in CACHE_EXTS:
            try:
                fh = open(f"{base}.{ext}", "rb")  # a miss costs one failed open per extension
            except FileNotFoundError:
                continue
            try:
                with fh, _pillow_open()(fh, formats=OPEN_FORMATS) as im:
                    return Path(f"{base}.{ext}"), im.width, im.height
            except Exception:  # damaged in place by someone else
                return None
        return None

    def settle(self, raw: Path) -> Settled:
        """Decode a fetched file (``_decode``): kept as it is under its format's extension, or
        the upright image re-encoded (JPEG for a JPEG, else PNG).

        Raises:
            MediaError: not a usable image (see ``_decode``).
        """
        fmt, _, (width, height), upright = _decode(raw)
        if upright is None:
            return Settled(KEEP_FORMATS[fmt], width, height)
        ext, encode = _encoder(upright, "jpg" if fmt in ("JPEG", "MPO") else "png")

        def write(fh: IO[bytes]) -> None:
            try:
                encode(fh)
            except (ValueError, KeyError, TypeError) as exc:  # OSError (disk) propagates
                raise MediaError(f"cannot re-encode the upright image: {exc}") from exc

        return Settled(ext, width, height, write)


def _encoder(im: Image.Image, ext: str) -> tuple[str, Callable[[IO[bytes]], None]]:
    """How to write a re-encoded image: JPEG (quality 95, EXIF without orientation, ICC
    profile kept) or PNG (lossless)."""
    icc = im.info.get("icc_profile")
    if ext == "jpg":
        out = im if im.mode in ("RGB", "L", "CMYK") else im.convert("RGB")
        exif = out.getexif()
        exif.pop(EXIF_ORIENTATION, None)

        def jpeg(fh: IO[bytes]) -> None:
            out.save(fh, "JPEG", quality=95, exif=exif.tobytes(), icc_profile=icc)

        return "jpg", jpeg
    png = im if im.mode in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA") else im.convert("RGBA")

    def write_png(fh: IO[bytes]) -> None:
        png.save(fh, "PNG", icc_profile=icc)

    return "png", write_png


def _pillow_open() -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``: importing ultralytics replaces it with a wrapper that, on a
    file Pillow cannot identify, tries to install and import a HEIF plugin (pi-heif)."""
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    return original if callable(original) else Image.open


def _decode(raw: Path) -> tuple[str, int, tuple[int, int], Image.Image | None]:
    """Decode a fetched file: (format, EXIF orientation, upright (width, height), the upright
    image to encode, or None when the file can be kept as it is).

    A JPEG kept as it is (orientation 1) is decoded at 1/8 scale (libjpeg's DCT scaling,
    Pillow's ``draft``): every byte of its compressed data is still read and checked, so a
    truncated or corrupt one fails as in a full decode, in about half the time. Any other
    file is decoded fully.

    Raises:
        MediaError: not an image of ``OPEN_FORMATS``, corrupt or truncated, or over
            ``Image.MAX_IMAGE_PIXELS`` pixels (Pillow's decompression-bomb limit; over it is an
            error here, not a warning).
    """
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with _pillow_open()(raw, formats=OPEN_FORMATS) as im:
            if limit and im.width * im.height > limit:
                raise MediaError(f"decompression bomb: {im.width}x{im.height} pixels is over {limit}")
            fmt, size = str(im.format), im.size
            jpeg = fmt in ("JPEG", "MPO")
            orientation = _orientation(im) if jpeg else 1  # a JPEG's EXIF comes with its header
            if jpeg and orientation == 1:
                im.draft(None, (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()  # a truncated or corrupt file fails here, not in training
                return fmt, 1, size, None
            im.load()  # (a PNG's EXIF may follow its pixels: read after them)
            if not jpeg:
                orientation = _orientation(im)
            if orientation == 1 and fmt in KEEP_FORMATS:
                return fmt, 1, size, None
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im.copy()
            return fmt, orientation, upright.size, upright
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise MediaError(f"decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise MediaError("not an image (or not one of " + ", ".join(OPEN_FORMATS) + ")") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error... on broken files
        raise MediaError(f"corrupt image: {exc.__class__.__name__}: {exc}") from exc


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent, invalid or unreadable (the pixels are fine)."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # broken EXIF blocks are common in camera files
        return 1
    return value if 1 <= value <= 8 else 1
