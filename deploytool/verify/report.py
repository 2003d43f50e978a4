"""The parity report as one self-contained HTML page: the numbers, and pictures of the errors.

`deploytool verify --report` writes it as parity.html beside parity.md. Besides the
comparisons table it shows, per input and backend, a heat map of |original - ours| and the
64 px window of the output where the error is largest: original, ours and the amplified
difference side by side. Everything is inline (images as PNG data URLs, CSS, a few lines of
script), so the file can be mailed, archived or opened offline.
"""

from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from deploytool.runtime.fileio import write_text_atomic

CROP_SIZE = 64
CROP_DISPLAY_PX = 192
HEATMAP_MAX_PX = 512
HEATMAP_MIN_DISPLAY_PX = 256
NON_FINITE_RGB = (255, 0, 255)  # magenta: not a colour of viridis, nor of natural images' usual errors
COLORMAP_NAME = "viridis"


@dataclass(frozen=True)
class Visual:
    """One (inputs, backend) pair's outputs, for pictures."""

    inputs: str  # label, e.g. "image baby.png tiled" or "synthetic#0 1x3x64x64"
    candidate: str  # backend name, e.g. "ort-fp16"
    original: np.ndarray  # HWC float32, the original model's output (unclamped, nominal range [0,1]); C is 1 or 3
    output: np.ndarray  # HWC float32, the candidate's output, same shape

    def __post_init__(self) -> None:
        # A mismatch here is a bug in the caller, not something a user can fix: no DeployError.
        for name in ("original", "output"):
            array = getattr(self, name)
            if array.ndim != 3 or array.shape[2] not in (1, 3) or array.shape[0] == 0 or array.shape[1] == 0:
                raise ValueError(f"Visual {name} must be HWC with 1 or 3 channels, got shape {array.shape}")
        if self.original.shape != self.output.shape:
            raise ValueError(f"Visual original {self.original.shape} and output {self.output.shape} differ in shape")


def worst_crop(diff: np.ndarray, size: int = CROP_SIZE) -> tuple[int, int]:
    """Top-left (y, x) of the size x size window with the largest summed `diff` (HW, or HWC: summed over C).

    The window is min(size, H) x min(size, W). Non-finite entries count as more than any finite
    one, so a NaN or inf region is where the crop goes.
    """
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    height, width = diff.shape
    window_h, window_w = min(size, height), min(size, width)
    finite = np.isfinite(diff)
    largest_finite = float(np.max(diff, where=finite, initial=0.0))
    weights = np.where(finite, diff, largest_finite + 1.0).astype(np.float64)
    # Summed-area table with a zero row and column in front: every window sum in four lookups.
    table = np.zeros((height + 1, width + 1), dtype=np.float64)
    table[1:, 1:] = weights.cumsum(axis=0).cumsum(axis=1)
    rows, cols = height - window_h + 1, width - window_w + 1
    sums = table[window_h:, window_w:] - table[:rows, window_w:] - table[window_h:, :cols] + table[:rows, :cols]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x)


def difference_gain(max_diff: float) -> float:
    """The ×N that maps `max_diff` to just under full scale: 1/max_diff rounded down to 2 significant digits, at least 1."""
    if not math.isfinite(max_diff) or max_diff <= 0 or max_diff >= 1:
        return 1.0
    exact = 1.0 / max_diff
    step = 10.0 ** (math.floor(math.log10(exact)) - 1)
    return max(1.0, round(math.floor(exact / step + 1e-9) * step, 10))


def render_html(report: dict[str, Any], visuals: list[Visual]) -> str:
    """The whole page as one string."""
    comparisons = report.get("comparisons", [])
    failed = sum(1 for c in comparisons if not c["passed"])
    verdict = "PASSED" if report["passed"] else "FAILED"
    summary = f"{len(comparisons) - failed} of {len(comparisons)} comparisons passed"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may come from outside the file; the browser enforces what the page promises.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Parity: {_text(report['model_id'])} — {verdict}</title>",
        f"<style>{_STYLE}</style>",
        f"<script>{_IMAGES_LOADED_SCRIPT}</script>",
        "</head><body><main>",
        f"<h1>Parity: {_text(report['model_id'])}</h1>",
        f'<p class="provenance">Original: {_text(report["original"])}. Weights: {_text(report["weights"])}.</p>',
        f'<p class="verdict {verdict.lower()}"><strong>{verdict}</strong> <span>{_text(summary)}</span></p>',
    ]
    backends = report.get("backends", [])
    if backends:
        parts.append(f"<p>Backends compared: {_text(', '.join(map(str, backends)))}.</p>")
    skipped = report.get("skipped", {})
    if skipped:
        parts.append('<ul class="skipped">')
        parts.extend(f"<li>Skipped <code>{_text(name)}</code>: {_text(reason)}</li>" for name, reason in skipped.items())
        parts.append("</ul>")
    parts.append(_comparisons_table(comparisons))
    if visuals:
        parts.append("<h2>Where the outputs differ</h2>")
        parts.append(
            f'<p class="note">Per input and backend: a heat map of |original − ours| (max over channels) with the '
            f"worst {CROP_SIZE}×{CROP_SIZE} window outlined, and that window side by side. Pixels are clipped to "
            f'[0, 1] for display; NaN or infinite values are shown in <span class="nonfinite-swatch"></span> magenta.</p>'
        )
        parts.extend(_visual_section(visual, _comparison_for(comparisons, visual)) for visual in visuals)
    parts.append("</main></body></html>\n")
    return "\n".join(parts)


def write_html(path: str | os.PathLike, report: dict[str, Any], visuals: list[Visual]) -> None:
    """Render and write the page in one rename: a failed render leaves any previous page intact."""
    write_text_atomic(path, render_html(report, visuals))


def _comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    rows = [
        '<table class="comparisons"><thead><tr><th>inputs</th><th>original vs</th><th class="num">max abs</th>'
        '<th class="num">mean abs</th><th class="num">PSNR dB</th><th>limits</th><th>result</th></tr></thead><tbody>'
    ]
    for c in comparisons:
        result = "pass" if c["passed"] else "FAIL"
        rows.append(
            f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{_text(c["inputs"])}</td><td>{_text(c["candidate"])}</td>'
            f'<td class="num">{_number(c["max_abs"], ".2e")}</td><td class="num">{_number(c["mean_abs"], ".2e")}</td>'
            f'<td class="num">{_number(c["psnr"], ".2f")}</td><td>{_text(c["limits"])}</td>'
            f'<td class="result">{result}</td></tr>'
        )
    if not comparisons:
        rows.append('<tr><td colspan="7">no comparisons</td></tr>')
    rows.append("</tbody></table>")
    return "".join(rows)


def _comparison_for(comparisons: list[dict[str, Any]], visual: Visual) -> dict[str, Any] | None:
    for c in comparisons:
        if c["inputs"] == visual.inputs and c["candidate"] == visual.candidate:
            return c
    return None


def _visual_section(visual: Visual, comparison: dict[str, Any] | None) -> str:
    original = np.asarray(visual.original, dtype=np.float32)
    output = np.asarray(visual.output, dtype=np.float32)
    height, width, _ = original.shape
    with np.errstate(invalid="ignore", over="ignore"):
        channel_diff = np.abs(original - output)
    diff = channel_diff.max(axis=2)
    # max() over channels propagates NaN but not every inf - inf; test the inputs directly.
    non_finite = ~(np.isfinite(original).all(axis=2) & np.isfinite(output).all(axis=2) & np.isfinite(diff))
    diff[non_finite] = np.nan
    max_diff = float(np.max(diff, where=~non_finite, initial=0.0))
    crop_origin = worst_crop(diff)

    status = ""
    metrics = ""
    if comparison is not None:
        status = f' <span class="badge {"pass" if comparison["passed"] else "fail"}">{"pass" if comparison["passed"] else "FAIL"}</span>'
        metrics = (
            f'<p class="metrics">max abs {_number(comparison["max_abs"], ".2e")} · mean abs {_number(comparison["mean_abs"], ".2e")} · '
            f"PSNR {_number(comparison['psnr'], '.2f')} dB · limits {_text(comparison['limits'])}</p>"
        )
    failed_class = " failed" if comparison is not None and not comparison["passed"] else ""
    parts = [
        f'<section class="visual{failed_class}">',
        f'<h3>{_text(visual.inputs)} <span class="vs">original vs</span> {_text(visual.candidate)}{status}</h3>',
        metrics,
        '<div class="panes">',
        _heatmap_figure(diff, non_finite, max_diff, crop_origin, visual),
        _crops_figure(original, output, channel_diff, diff, crop_origin, visual),
        "</div>",
    ]
    if non_finite.any():
        counts = []
        for name, array in (("original", original), (f"ours ({visual.candidate})", output)):
            bad = int((~np.isfinite(array).all(axis=2)).sum())
            if bad:
                counts.append(f"{name}: {bad} of {height * width} pixels")
        if not counts:
            counts.append("both finite, but their difference overflows float32")
        parts.append(f'<p class="warning">Non-finite values (NaN or ±inf), shown in magenta — {_text("; ".join(counts))}.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _heatmap_figure(diff: np.ndarray, non_finite: np.ndarray, max_diff: float, crop_origin: tuple[int, int], visual: Visual) -> str:
    height, width = diff.shape
    pooled, pooled_non_finite, factor = _max_pool_to(np.nan_to_num(diff, nan=0.0), non_finite, HEATMAP_MAX_PX)
    scaled = pooled / max_diff if max_diff > 0 else np.zeros_like(pooled)
    levels = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
    heat = _COLORMAP_RGB[levels]
    heat[pooled_non_finite] = NON_FINITE_RGB
    shown_h, shown_w = heat.shape[:2]
    magnify = max(1, HEATMAP_MIN_DISPLAY_PX // max(shown_h, shown_w))
    display_w, display_h = shown_w * magnify, shown_h * magnify

    crop_y, crop_x = crop_origin
    crop_h, crop_w = min(CROP_SIZE, height), min(CROP_SIZE, width)
    outline = (
        f'<div class="crop-outline" style="left:{100 * crop_x / width:.3f}%;top:{100 * crop_y / height:.3f}%;'
        f'width:{100 * crop_w / width:.3f}%;height:{100 * crop_h / height:.3f}%"></div>'
    )
    if max_diff > 0:
        ticks = [0.0, max_diff / 2, max_diff]
        scale_note = f"Colours ({COLORMAP_NAME}) run linearly from 0 to that max, this pair's own (not shared with other pairs), so small errors stay visible."
    else:
        ticks = [0.0, 0.0, 0.0]
        scale_note = "No finite difference: the outputs are identical where both are finite."
    legend = (
        f'<div class="scale" style="width:{display_w}px"><div class="bar" style="background:{_COLORMAP_CSS}"></div>'
        f'<div class="ticks">{"".join(f"<span>{t:.3g}</span>" for t in ticks)}</div></div>'
    )
    finite_word = "finite " if non_finite.any() else ""
    notes = [f"|original − ours|, max over channels, {width}×{height} px; max {finite_word}|diff| <strong>{max_diff:.3g}</strong>.", scale_note]
    if factor > 1:
        notes.append(f"Downscaled 1/{factor} to {shown_w}×{shown_h} for file size; each pixel shows the max of a {factor}×{factor} block, so no peak is lost.")
    if magnify > 1:
        notes.append(f"Shown {magnify}× enlarged (nearest neighbour).")
    notes.append(f"White box: the worst {crop_w}×{crop_h} window.")
    alt = _text(f"heat map of |original - ours| for {visual.inputs}, {visual.candidate}")
    return (
        f'<figure class="heat" style="width:{max(display_w, HEATMAP_MIN_DISPLAY_PX)}px">'
        f'<div class="heat-frame" style="width:{display_w}px;height:{display_h}px">'
        f'<img class="heatmap" alt="{alt}" width="{display_w}" height="{display_h}" src="{_png_data_url(heat)}">{outline}</div>'
        f"{legend}<figcaption>{' '.join(notes)}</figcaption></figure>"
    )


def _crops_figure(original: np.ndarray, output: np.ndarray, channel_diff: np.ndarray, diff: np.ndarray, crop_origin: tuple[int, int], visual: Visual) -> str:
    height, width = diff.shape
    y, x = crop_origin
    window = (slice(y, y + CROP_SIZE), slice(x, x + CROP_SIZE))
    crop_diff = diff[window]
    crop_non_finite = ~np.isfinite(crop_diff)
    crop_max = float(np.max(crop_diff, where=~crop_non_finite, initial=0.0))
    gain = difference_gain(crop_max)
    crop_h, crop_w = crop_diff.shape
    magnify = max(1, CROP_DISPLAY_PX // max(crop_h, crop_w))
    display_w, display_h = crop_w * magnify, crop_h * magnify

    with np.errstate(invalid="ignore", over="ignore"):
        amplified = channel_diff[window] * gain
    panels = [
        ("original", _display_rgb(original[window], ~np.isfinite(original[window]).all(axis=2))),
        (f"ours ({visual.candidate})", _display_rgb(output[window], ~np.isfinite(output[window]).all(axis=2))),
        (f"difference ×{_gain_text(gain)}", _display_rgb(amplified, crop_non_finite)),
    ]
    images = "".join(
        f'<figure class="crop"><img alt="{_text(label)} crop" width="{display_w}" height="{display_h}" '
        f'src="{_png_data_url(rgb)}"><figcaption>{_text(label)}</figcaption></figure>'
        for label, rgb in panels
    )
    caption = (
        f"Worst {crop_w}×{crop_h} window (largest summed |diff|) at x {x}, y {y} of {width}×{height}; "
        f"shown {magnify}× enlarged (nearest neighbour). Difference: |original − ours| per channel ×{_gain_text(gain)}, "
        f"so this window's max {crop_max:.3g} is near full brightness."
    )
    if crop_max == 0:
        caption = f"Worst {crop_w}×{crop_h} window at x {x}, y {y} of {width}×{height}; no finite difference in it, so the difference panel is shown at ×1."
    return f'<figure class="crops"><div class="crop-row">{images}</div><figcaption>{caption}</figcaption></figure>'


def _max_pool_to(values: np.ndarray, flags: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shrink by the smallest integer factor that fits `max_side`, keeping each block's max (and any flag)."""
    height, width = values.shape
    factor = max(1, math.ceil(max(height, width) / max_side))
    if factor == 1:
        return values, flags, 1
    pooled_h, pooled_w = math.ceil(height / factor), math.ceil(width / factor)
    padded = np.zeros((pooled_h * factor, pooled_w * factor), dtype=values.dtype)
    padded[:height, :width] = values
    padded_flags = np.zeros(padded.shape, dtype=bool)
    padded_flags[:height, :width] = flags
    pooled = padded.reshape(pooled_h, factor, pooled_w, factor).max(axis=(1, 3))
    pooled_flags = padded_flags.reshape(pooled_h, factor, pooled_w, factor).any(axis=(1, 3))
    return pooled, pooled_flags, factor


def _display_rgb(pixels: np.ndarray, non_finite: np.ndarray) -> np.ndarray:
    """HWC float (C 1 or 3) to 8-bit RGB for display: clipped to [0, 1], non-finite pixels magenta."""
    clean = np.nan_to_num(pixels, nan=0.0, posinf=1.0, neginf=0.0)
    rgb = np.rint(np.clip(clean, 0.0, 1.0) * 255).astype(np.uint8)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    rgb[non_finite] = NON_FINITE_RGB
    return rgb


def _png_data_url(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {rgb.shape} image as PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _gain_text(gain: float) -> str:
    return f"{gain:,.0f}" if gain >= 10 else f"{gain:g}"


def _number(value: Any, spec: str) -> str:
    # Reports loaded back from parity.json may hold "inf"/"nan" as strings.
    try:
        return _text(format(float(value), spec))
    except (TypeError, ValueError):
        return _text(value)


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _colormap_rgb() -> np.ndarray:
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)[:, 0, ::-1])


_COLORMAP_RGB = _colormap_rgb()
_COLORMAP_CSS = (
    "linear-gradient(to right, "
    + ", ".join(f"rgb({r},{g},{b}) {100 * level / 255:.1f}%" for level in range(0, 256, 17) for r, g, b in [_COLORMAP_RGB[level]])
    + ")"
)

_IMAGES_LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) {
    if (images[i].complete && images[i].naturalWidth > 0) loaded++;
  }
  document.body.dataset.imagesLoaded = loaded;
  document.body.dataset.imagesTotal = images.length;
});
"""

_STYLE = """
:root { color-scheme: light; }
body { margin: 0; background: #f4f5f7; color: #1d2330;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 32px 0 6px; }
h3 { font-size: 16px; margin: 0 0 4px; word-break: break-word; }
h3 .vs { font-weight: normal; color: #5b6477; }
code { font: 13px ui-monospace, "DejaVu Sans Mono", monospace; }
.provenance { color: #434b5c; margin: 0 0 12px; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 6px; font-size: 18px; margin: 4px 0 12px; }
.verdict span { font-size: 14px; margin-left: 8px; }
.verdict.passed { background: #dcf3e3; color: #0d5b26; border: 1px solid #8fd0a4; }
.verdict.failed { background: #fde2e1; color: #8c1512; border: 1px solid #eb9c99; }
.skipped { color: #6b4e00; padding-left: 20px; }
.note { color: #434b5c; max-width: 900px; }
table.comparisons { border-collapse: collapse; background: #fff; width: 100%; font-size: 14px;
  box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.comparisons th, .comparisons td { padding: 5px 10px; border-bottom: 1px solid #e3e6eb; text-align: left; }
.comparisons th { background: #e9ecf1; font-weight: 600; }
.comparisons .num { text-align: right; font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: nowrap; }
.comparisons tr.fail { background: #fde8e7; }
.comparisons tr.fail td:first-child { box-shadow: inset 4px 0 #d0312b; }
.comparisons tr.fail .result { color: #b0201a; font-weight: 700; }
.comparisons tr.pass .result { color: #17803d; }
.visual { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 14px 16px; margin: 16px 0;
  box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.visual.failed { border-color: #e39a96; box-shadow: inset 4px 0 #d0312b; }
.badge { font-size: 12px; padding: 1px 7px; border-radius: 10px; vertical-align: 2px; margin-left: 6px; }
.badge.pass { background: #dcf3e3; color: #0d5b26; }
.badge.fail { background: #d0312b; color: #fff; }
.metrics { margin: 0 0 10px; color: #434b5c; font-size: 13px; }
.panes { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 12.5px; color: #4d5566; margin-top: 6px; }
.heat-frame { position: relative; line-height: 0; background: #000; }
.heat-frame img, .crop img { image-rendering: pixelated; display: block; }
.crop-outline { position: absolute; box-sizing: border-box; border: 2px solid #fff; outline: 1px solid #000;
  min-width: 4px; min-height: 4px; }
.scale { margin-top: 8px; max-width: 100%; }
.scale .bar { height: 12px; border: 1px solid #9aa1ad; }
.scale .ticks { display: flex; justify-content: space-between; font: 12px ui-monospace, "DejaVu Sans Mono", monospace; }
.crops > figcaption { max-width: 620px; }
.crop-row { display: flex; gap: 10px; flex-wrap: wrap; }
.crop figcaption { text-align: center; font-weight: 600; color: #1d2330; }
.nonfinite-swatch { display: inline-block; width: 10px; height: 10px; background: rgb(255,0,255); vertical-align: -1px; }
.warning { color: #8a1f7a; font-weight: 600; margin: 10px 0 0; }
"""
