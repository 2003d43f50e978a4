"""A small deterministic PNG encoder: the bytes depend only on the samples and zlib.

cv2 writes PNG with the libpng and zlib bundled in its wheel, whose output the C++ runtime
(`cpp/`) cannot reproduce. Both sides instead write exactly this layout: one IHDR, the zlib
level 6 (default strategy) stream of rows that all use the Up filter cut into IDAT chunks of
`max_idat_bytes` (the last one shorter), one IEND. With the same zlib the files are identical
byte for byte; the samples are what cv2 would write.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

COMPRESSION_LEVEL = 6
FILTER_UP = 2
# colour type by channel count: gray, gray+alpha, RGB, RGBA
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A chunk's length field holds at most 2^31 - 1 (PNG spec, 5.3); the C++ writer uses the same.
MAX_IDAT_BYTES = 2**31 - 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode(samples: np.ndarray, max_idat_bytes: int = MAX_IDAT_BYTES) -> bytes:
    """PNG bytes of uint8 or uint16 samples, HW or HWC with 1-4 channels in gray/GA/RGB/RGBA order."""
    if not 1 <= max_idat_bytes <= MAX_IDAT_BYTES:
        raise ValueError(f"max_idat_bytes must be in [1, {MAX_IDAT_BYTES}], got {max_idat_bytes}")
    if samples.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG samples must be uint8 or uint16, got {samples.dtype}")
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if samples.ndim != 3 or samples.shape[2] not in _COLOR_TYPE or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(f"PNG samples must be non-empty HW or HWC with 1-4 channels, got shape {samples.shape}")
    height, width, channels = samples.shape
    depth = samples.dtype.itemsize * 8
    rows = np.ascontiguousarray(samples.astype(samples.dtype.newbyteorder(">"), copy=False)).view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter defines
    header = struct.pack(">IIBBBBB", width, height, depth, _COLOR_TYPE[channels], 0, 0, 0)
    compressed = zlib.compress(filtered.tobytes(), COMPRESSION_LEVEL)
    idats = [_chunk(b"IDAT", compressed[at : at + max_idat_bytes]) for at in range(0, len(compressed), max_idat_bytes)]
    return b"".join([_SIGNATURE, _chunk(b"IHDR", header), *idats, _chunk(b"IEND", b"")])
