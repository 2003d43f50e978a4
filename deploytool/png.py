"""A small deterministic PNG encoder: the bytes depend only on the samples and zlib.

cv2 writes PNG with the libpng and zlib bundled in its wheel, whose output the C++ runtime
(`cpp/`) cannot reproduce. Both sides instead write exactly this layout: one IHDR, one IDAT
holding zlib level 6 (default strategy) over rows that all use the Up filter, one IEND. With
the same zlib the files are identical byte for byte; the samples are what cv2 would write.
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


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode(samples: np.ndarray) -> bytes:
    """PNG bytes of uint8 or uint16 samples, HW or HWC with 1-4 channels in gray/GA/RGB/RGBA order."""
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
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(filtered.tobytes(), COMPRESSION_LEVEL)) + _chunk(b"IEND", b"")
