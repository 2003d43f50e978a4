"""Super-resolution quality the way SR papers report it (BasicSR's convention).

PSNR and SSIM on the Y channel (ITU-R BT.601, 16-235) of 8-bit outputs, with `scale` pixels
cropped at every border and the HR image mod-cropped to the LR size times the scale, as
BasicSR's `calculate_psnr(..., test_y_channel=True)` / `calculate_ssim` compute them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from deploytool.build.metrics import psnr
from deploytool.errors import DeployError
from deploytool.runtime import backends as registry
from deploytool.runtime import images, inference, input_batches
from deploytool.runtime.manifest import Manifest

BICUBIC = "bicubic"
# `eval`'s earlier name for the original (what `verify` calls original): still accepted, with a note
DEPRECATED_ORIGINAL = "reference"


def method_names(text: str, note: Callable[[str], None]) -> list[str]:
    """'original, ort' -> ['original', 'ort']; the deprecated name of the original is kept as
    given (it labels its results) and `note` says, in one line, what to write instead."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise DeployError(f"--methods names no method: give some of original, {', '.join(registry.runtime_names())}, {BICUBIC}")
    if DEPRECATED_ORIGINAL in names:
        note(f"note: --methods {DEPRECATED_ORIGINAL} is deprecated; it is called {registry.original().name}, as in verify")
    return names


def is_original(method: str) -> bool:
    return method == DEPRECATED_ORIGINAL or method == registry.original().name


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.clip(pixels, 0, 1) * 255.0), 0, 255).astype(np.uint8)


def y_channel(rgb: np.ndarray) -> np.ndarray:
    """8-bit RGB (or gray) -> Y in [16, 235] as float64, BT.601 like MATLAB's rgb2ycbcr."""
    rgb = rgb.astype(np.float64) / 255.0
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        rgb = np.repeat(rgb.reshape(rgb.shape[0], rgb.shape[1], 1), 3, axis=2)
    return rgb @ np.array([65.481, 128.553, 24.966]) + 16.0


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM with an 11x11 Gaussian window (sigma 1.5), valid region only, as BasicSR."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = kernel @ kernel.T

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, window)[5:-5, 5:-5]

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def score(sr_uint8: np.ndarray, hr_uint8: np.ndarray, crop: int) -> tuple[float, float]:
    sr_y, hr_y = y_channel(sr_uint8), y_channel(hr_uint8)
    if crop:
        sr_y, hr_y = sr_y[crop:-crop, crop:-crop], hr_y[crop:-crop, crop:-crop]
    return psnr(sr_y, hr_y, peak=255.0), ssim(sr_y, hr_y)


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic with a = -0.5 (MATLAB's and PIL's kernel), on [0, 1] float HWC."""
    from PIL import Image

    height, width = lr.shape[:2]
    channels = [Image.fromarray(lr[:, :, c].astype(np.float32), mode="F").resize((width * scale, height * scale), Image.BICUBIC) for c in range(lr.shape[2])]
    return np.stack([np.asarray(c) for c in channels], axis=2)


@dataclass
class ImageScore:
    image: str
    method: str
    psnr: float
    ssim: float


def dataset_pairs(dataset: Path, scale: int) -> list[tuple[Path, Path]]:
    """(LR, HR) pairs from `DIR/HR` and `DIR/LR_bicubic/X{scale}` (names `stem` or `stem x{scale}`)."""
    hr_dir, lr_dir = dataset / "HR", dataset / "LR_bicubic" / f"X{scale}"
    if not hr_dir.is_dir() or not lr_dir.is_dir():
        raise DeployError(f"{dataset} needs HR/ and LR_bicubic/X{scale}/ folders (the Set5/Set14 layout)")
    pairs = []
    for hr in input_batches.list_images(hr_dir):
        candidates = [lr_dir / f"{hr.stem}x{scale}{hr.suffix}", lr_dir / hr.name]
        lr = next((c for c in candidates if c.is_file()), None)
        if lr is None:
            raise DeployError(f"no LR image for {hr.name} in {lr_dir}")
        pairs.append((lr, hr))
    return pairs


# the fewest pixels per side an SR image keeps after its border crop for PSNR and SSIM to mean anything
MIN_SCORED_SIDE = 8


def check_pair(lr_path: Path, lr_shape: tuple[int, ...], hr_shape: tuple[int, ...], scale: int) -> None:
    """Refuse, in one line, an LR image that is not its HR image's size over `scale` (HR cut to a
    multiple of the scale, as BasicSR's test sets are made), or one too small to score."""
    for lr_side, hr_side in zip(lr_shape[:2], hr_shape[:2]):
        if not lr_side * scale <= hr_side < (lr_side + 1) * scale:
            raise DeployError(f"{lr_path}: {lr_shape[1]}x{lr_shape[0]} is not its HR image's {hr_shape[1]}x{hr_shape[0]} over x{scale}")
        if lr_side * scale - 2 * scale < MIN_SCORED_SIDE:
            raise DeployError(f"{lr_path}: {lr_shape[1]}x{lr_shape[0]} is too small to score at x{scale} ({scale} px border cropped)")


def evaluate(
    model_id: str,
    model_scale: int,
    dataset: str | Path,
    methods: dict[str, Callable[[np.ndarray], np.ndarray] | None],
    *,
    scale: int,
    progress: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Score each method (a callable LR HWC [0,1] -> SR HWC, or None for bicubic) on a dataset."""
    if scale != model_scale:
        raise DeployError(f"--scale {scale} does not match the export's scale x{model_scale}")
    rows: list[ImageScore] = []
    for lr_path, hr_path in dataset_pairs(Path(dataset), scale):
        lr = images.fit_channels(images.read_image(lr_path).pixels, 3, model_id=model_id, path=lr_path)
        hr = to_uint8(images.fit_channels(images.read_image(hr_path).pixels, 3, model_id=model_id, path=hr_path))
        check_pair(lr_path, lr.shape, hr.shape, scale)
        hr = hr[: lr.shape[0] * scale, : lr.shape[1] * scale]
        for method, run in methods.items():
            progress(f"{lr_path.name}: {method}")
            sr = bicubic_upscale(lr, scale) if run is None else run(lr)
            value_psnr, value_ssim = score(to_uint8(sr), hr, crop=scale)
            rows.append(ImageScore(hr_path.stem, method, value_psnr, value_ssim))
    summary = {
        method: {
            "psnr": float(np.mean([r.psnr for r in rows if r.method == method])),
            "ssim": float(np.mean([r.ssim for r in rows if r.method == method])),
            "images": sum(1 for r in rows if r.method == method),
        }
        for method in methods
    }
    return {"model_id": model_id, "dataset": str(dataset), "scale": scale, "summary": summary, "images": [asdict(r) for r in rows]}


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model_id']} on {Path(report['dataset']).name} x{report['scale']} (Y channel, {report['scale']} px border cropped)",
        "",
        "| method | PSNR (dB) | SSIM |",
        "|---|---:|---:|",
    ]
    for method, values in report["summary"].items():
        lines.append(f"| {method} | {values['psnr']:.2f} | {values['ssim']:.4f} |")
    return "\n".join(lines) + "\n"


def tiled_method(runner, manifest: Manifest, overlap: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda lr: inference.restore_array(runner, manifest, lr, overlap=overlap)


def whole_image_method(runner) -> Callable[[np.ndarray], np.ndarray]:
    return lambda lr: runner(lr.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
