"""An export opened on one backend, as a Python object: arrays and files in, restored ones out.

`deploytool.open(export_dir, backend=...)` returns a `Restorer`; `deploytool run` and the Triton
whole-image model restore through one too, so the three give the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploytool.errors import DeployError, ImageError
from deploytool.runtime import images, inference
from deploytool.runtime.backends import Runner
from deploytool.runtime.manifest import Manifest

if TYPE_CHECKING:
    from deploytool.runtime.video import EncodeOptions, TiledRestorer

# LoadedImage.bit_depth of float samples: they come back as floats, never quantized
FLOAT_DEPTH = 32


def check_array(samples: np.ndarray, label: str) -> None:
    """Refuse, in one line naming `label`, what is not an HWC image of 1 to 4 channels."""
    if samples.ndim != 3:
        raise ImageError(f"{label}: an image is HWC (height, width, channels), got {samples.ndim} dimension(s) {list(samples.shape)}")
    height, width, channels = samples.shape
    if channels not in (1, 2, 3, 4):
        raise ImageError(f"{label}: {channels} channels; send 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)")
    if height < 1 or width < 1:
        raise ImageError(f"{label}: empty image {width}x{height}")


def _float_image(samples: np.ndarray, label: str) -> images.LoadedImage:
    """Float samples in [0, 1] (gray, gray+alpha, RGB, RGBA), split like `images.from_samples`."""
    samples = samples.astype(np.float32, copy=False)
    if not np.all(np.isfinite(samples)):
        raise ImageError(f"{label}: FP32 samples must be finite")
    if samples.size and (samples.min() < 0.0 or samples.max() > 1.0):
        raise ImageError(f"{label}: FP32 samples must lie in [0, 1], got [{samples.min():g}, {samples.max():g}]")
    alpha = np.ascontiguousarray(samples[:, :, -1]) if samples.shape[2] in (2, 4) else None
    pixels = np.ascontiguousarray(samples[:, :, :-1] if alpha is not None else samples)
    return images.LoadedImage(pixels, alpha, FLOAT_DEPTH, Path(label))


def image_from_array(samples: np.ndarray, label: str) -> images.LoadedImage:
    """An HWC array as the image `run` would read from a file: uint8 and uint16 samples as stored,
    floats in [0, 1]; the last channel is alpha for 2 and 4 channels."""
    samples = np.asarray(samples)
    check_array(samples, label)
    if samples.dtype in (np.float32, np.float64, np.float16):
        return _float_image(samples, label)
    return images.from_samples(samples, label)


def is_video_file(path: str | Path) -> bool:
    """What `deploytool run` takes for a video: a file FFmpeg finds one in, or a file not named as
    an image (probed as a video, to say what it lacks)."""
    from deploytool.runtime import video
    from deploytool.runtime.input_batches import IMAGE_SUFFIXES

    path = Path(path)
    return video.is_video(path) or (path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES)


def _result(restored: np.ndarray, alpha: np.ndarray | None, bit_depth: int) -> np.ndarray:
    """Restored pixels and alpha as one HWC array: floats clipped to [0, 1], integers quantized
    as `run` writes them; alpha last."""
    if bit_depth == FLOAT_DEPTH:
        channels = [np.clip(restored, 0.0, 1.0)] + ([] if alpha is None else [np.clip(alpha, 0.0, 1.0)[:, :, None]])
        return np.ascontiguousarray(np.concatenate(channels, axis=2).astype(np.float32))
    channels = [images.quantize(restored, bit_depth)] + ([] if alpha is None else [images.quantize(alpha, bit_depth)[:, :, None]])
    return np.ascontiguousarray(np.concatenate(channels, axis=2))


class Restorer:
    """An export's runner with its manifest and overlap: restores arrays, image files and videos
    as `deploytool run` does. A context manager; `close()` releases the backend."""

    def __init__(self, runner: Runner, manifest: Manifest, *, overlap: int | None = None):
        self.runner, self.manifest = runner, manifest
        self.overlap = manifest.overlap(overlap)
        self._frames: TiledRestorer | None = None

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def scale(self) -> int:
        return self.manifest.scale

    def restore(self, *views: np.ndarray) -> np.ndarray:
        """One HWC image (uint8, uint16, or float in [0, 1]; gray, gray+alpha, RGB or RGBA), or one
        per view for a model of several, restored: the same type and channels back, alpha last."""
        labels = [view.name for view in self.manifest.views]
        if len(views) != len(labels):
            raise ImageError(f"{self.manifest.model_id} takes {len(labels)} image(s) ({', '.join(labels)}); {len(views)} given")
        return self.restore_images([image_from_array(array, label) for array, label in zip(views, labels)], labels)

    def restore_images(self, loaded: Sequence[images.LoadedImage], labels: Sequence[str], *, on_tiles: inference.OnTiles | None = None) -> np.ndarray:
        """Images already read (one per view, `labels` naming them in messages) -> the restored
        array, in the first image's channels and sample type."""
        manifest = self.manifest
        if any(image.pixels.shape[:2] != loaded[0].pixels.shape[:2] for image in loaded):
            raise ImageError(f"{' and '.join(labels)} differ in size: the views must match")
        stacked = [
            images.fit_channels(image.pixels, view.channels, model_id=manifest.model_id, path=label)
            for image, view, label in zip(loaded, manifest.views, labels)
        ]
        pixels = np.concatenate(stacked, axis=2) if len(stacked) > 1 else stacked[0]
        restored, alpha = inference.restore_image(self.runner, manifest, pixels, loaded[0], overlap=self.overlap, on_tiles=on_tiles)
        bad = int(np.count_nonzero(~np.isfinite(restored)))
        if bad:
            raise DeployError(f"{manifest.model_id} produced {bad} non-finite (NaN/inf) sample(s); refusing to return them")
        return _result(restored, alpha, loaded[0].bit_depth)

    def restore_file(self, source: inference.Source, destination: str | Path, **options: Any) -> dict[str, Any]:
        """Restore one file into `destination`, atomically: a video (a file FFmpeg finds one in, or
        that is not named as an image) through `restore_video`, else an image through
        `restore_image_file`; `options` are theirs. Returns what was done, as `run --json` says."""
        if not isinstance(source, tuple) and is_video_file(source):
            return self.restore_video(source, destination, **options)
        return self.restore_image_file(source, destination, **options)

    def restore_image_file(
        self,
        source: inference.Source,
        destination: str | Path,
        *,
        on_tiles: inference.OnTiles | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Read, restore and atomically write one image (a tuple of one file per view for a model
        of several)."""
        return inference.restore_file(self.runner, self.manifest, source, destination, overlap=self.overlap, on_tiles=on_tiles, on_start=on_start)

    def restore_video(self, source: str | Path, destination: str | Path, encode: EncodeOptions | None = None, **options: Any) -> dict[str, Any]:
        """Restore a video (deploytool.runtime.video.restore_video with this export: `encode` an
        EncodeOptions, default what `run` picks for the source; `options` resume_key, segment_frames,
        on_start, on_frame)."""
        from deploytool.runtime import video

        return video.restore_video(Path(source), Path(destination), self.frame_restorer(), encode, **options)

    def frame_restorer(self) -> TiledRestorer:
        """Video frames through this export, tiled as images are (deploytool.runtime.video)."""
        from deploytool.runtime import video

        if self._frames is None:
            self._frames = video.TiledRestorer(self.runner, self.manifest, overlap=self.overlap)
        return self._frames

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Restorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
