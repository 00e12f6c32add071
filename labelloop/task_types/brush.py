"""Label Studio brush masks: label-studio-sdk's RLE of the RGBA bytes of the image, decoded and
encoded (``label_studio_sdk.converter.brush``; ``labelloop.task_types.convert`` describes the value)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from labelloop.ls_json import RegionValue
from labelloop.task_types.geometry import as_array

#: Longest brush ``rle`` list decoded (values): label-studio-sdk's decoder first makes a bit string
#: and a list of about 72 bytes per value. Label Studio brushes are runs, a few KB; the SDK's
#: longest encoding (alternating pixels) of a 512x512 image is 1.8 MB.
MAX_BRUSH_RLE_BYTES = 2 * 1024 * 1024


def brush_to_mask(value: RegionValue, original_width: int, original_height: int) -> npt.NDArray[np.bool_]:
    """Decode a Label Studio brush ``value`` to its mask.

    Args:
        value: ``{"format": "rle", "rle": [int, ...]}``; label-studio-sdk's ``decode_rle`` gives
            ``original_height * original_width * 4`` RGBA bytes.
        original_width, original_height: the region's ``original_width/height``.

    Returns:
        bool array (original_height, original_width): alpha > 0.

    Raises:
        ValueError: not ``rle`` format, more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``, a
            size in the RLE's header (its first 32 bits, big-endian, which ``decode_rle``
            allocates before reading on) that does not match the image, a list longer than any
            encoding of the image could be or than ``MAX_BRUSH_RLE_BYTES``, or a value that is
            not a byte; all checked before decoding, so a hostile header or list cannot make the
            worker allocate gigabytes.
    """
    from label_studio_sdk.converter.brush import decode_rle
    from PIL import Image

    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not rle or not isinstance(rle, list):
        raise ValueError(f"brush format {value.get('format')!r} without rle data")
    W, H = int(original_width), int(original_height)
    if W <= 0 or H <= 0 or W * H > (Image.MAX_IMAGE_PIXELS or 2**31):
        raise ValueError(f"brush mask of {W}x{H} pixels is out of bounds")
    try:
        claimed = int.from_bytes(bytes(rle[:4]), "big")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rle is not a list of bytes: {exc}") from exc
    if len(rle) < 7 or claimed != W * H * 4:
        raise ValueError(f"rle header claims {claimed} bytes, expected {H}x{W}x4 = {W * H * 4}")
    limit = min(MAX_BRUSH_RLE_BYTES, _rle_bound(rle, claimed))
    if len(rle) > limit:  # decode_rle makes a str of 8 chars and a list of 8 refs per value first
        raise ValueError(f"rle has {len(rle)} values, more than {limit} (the longest encoding of {W}x{H}, or the cap)")
    try:
        data = bytes(rle)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rle is not a list of bytes: {exc}") from exc
    flat = decode_rle(data)
    if flat.size != W * H * 4:
        raise ValueError(f"rle holds {flat.size} bytes, expected {H}x{W}x4 = {W * H * 4}")
    return np.asarray(flat.reshape(H, W, 4)[:, :, 3] > 0)


def _rle_bound(rle: Sequence[int], values: int) -> int:
    """The most bytes an RLE of ``values`` values can take with its header's word size and run-length
    sizes (bits 32-52): every value its own run, 1 + 2 + the longest size + the word size bits each."""
    head = int.from_bytes(bytes(rle[:7]), "big")  # 56 bits: 32 count, 5 word size - 1, 4 x 4 sizes - 1
    word = ((head >> 19) & 0x1F) + 1
    longest = max(((head >> (15 - 4 * k)) & 0xF) + 1 for k in range(4))
    return math.ceil((53 + values * (3 + longest + word)) / 8)


def mask_to_brush(mask: Any) -> RegionValue:
    """Encode a mask as a Label Studio brush ``value`` (label-studio-sdk ``mask2rle``, 255 where set).

    Args:
        mask: (H, W) array, nonzero is foreground; H x W must be the image's original size.

    Returns:
        ``{"format": "rle", "rle": [int, ...]}``.
    """
    from label_studio_sdk.converter.brush import mask2rle

    m = (as_array(mask, np.float32) > 0).astype(np.uint8) * 255
    return {"format": "rle", "rle": [int(v) for v in mask2rle(m)]}
