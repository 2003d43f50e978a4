"""Video through `deploytool run`'s pipeline against the model alone on the same tiles and against
the naive path, with peak memory at two lengths, all from one run.

    python scripts/video_bench.py [--export build/esrt-x2] [--backend ort] [--size 1280x720]
                                  [--frames 100] [--rss-frames 100,1000] [--repeats 2] [--no-naive] [--json]

The clip is generated (H.264 with an AAC track, so a stream is copied). Measured:
- pipeline: `video.restore_video` (decode thread -> model -> encode thread), frames/s and the
  model-busy share it reports;
- model alone: the same frames cut into the same tiles and batches, only the runner timed; the
  ratio pipeline / model alone is what the pipeline costs beyond the model;
- peak RSS of a fresh process restoring clips of each --rss-frames length (bounded memory: the
  longer clip within 10% of the shorter);
- naive: every frame decoded to a PNG, the PNG folder restored image by image as `run` does,
  the restored PNGs encoded (the same encoder settings, no stream copied).
Without --export, esrt-x2 is exported at its default tile, with ../shared's epoch-20 weights when
present (random weights otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ESRT_WEIGHTS = ROOT.parent / "shared" / "weights" / "esrt_x2_partial_epoch20.pth"
PRESET = "ultrafast"  # encoder speed is not what is measured; every path uses the same one


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def default_export(base: Path) -> Path:
    from deploytool.build import export, registry
    from deploytool.build.networks import resolve_source

    entry = registry.get("esrt-x2")
    source = resolve_source(entry, weights=ESRT_WEIGHTS) if ESRT_WEIGHTS.is_file() else resolve_source(entry, random_init=True)
    out = base / "esrt-x2"
    export.export(
        export.ExportRequest(entry=entry, source=source, out_dir=out, tile=entry.tiling.tile, batch=entry.tiling.batch, fp16=False, calibration_count=2)
    )
    return out


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    """Moving gradients with noise (x264 cannot make them free) and an AAC track."""
    import av

    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": PRESET}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "stereo"
        for index in range(frames):
            phase = index / 24
            picture = np.stack([np.sin(6 * x + phase) * y, np.cos(4 * y - phase) * x, (x + y) / 2], axis=2) * 0.4 + 0.5
            picture = np.clip(picture + rng.normal(0, 0.03, picture.shape), 0, 1)
            frame = av.VideoFrame.from_ndarray((picture * 255).astype(np.uint8), format="rgb24")
            frame.pts = index
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        samples_per_frame = 2000  # 48 kHz at 24 frames/s
        for number in range(frames * samples_per_frame // 1024):
            chunk = av.AudioFrame.from_ndarray(rng.uniform(-0.1, 0.1, (2, 1024)).astype(np.float32), format="fltp", layout="stereo")
            chunk.sample_rate, chunk.pts = 48000, number * 1024
            out.mux(audio.encode(chunk))
        out.mux(audio.encode(None))


def open_runner(export_dir: Path, backend: str):
    from deploytool.build.runners import open_runner as open_backend
    from deploytool.runtime.manifest import read_manifest

    manifest = read_manifest(export_dir)
    return manifest, open_backend(export_dir, manifest, backend)


def warm_up(runner, manifest) -> None:
    runner(np.zeros(manifest.input.shape, np.float32))


def run_pipeline(export_dir: Path, backend: str, clip: Path, out: Path) -> dict:
    from deploytool.runtime import video

    manifest, runner = open_runner(export_dir, backend)
    with runner:
        warm_up(runner, manifest)
        restorer = video.TiledRestorer(runner, manifest, overlap=manifest.overlap())
        return video.restore_video(clip, out, restorer, video.EncodeOptions(preset=PRESET))


def model_alone(export_dir: Path, backend: str, clip: Path) -> dict:
    """The runner timed alone on the pipeline's tiles and batches (decoding and cutting untimed)."""
    import av

    from deploytool.runtime import inference, tiling
    from deploytool.runtime.video import frames as framing
    from deploytool.runtime.video.probe import probe

    info = probe(clip)
    manifest, runner = open_runner(export_dir, backend)
    seconds, batches = 0.0, 0

    def timed(batch: np.ndarray) -> np.ndarray:
        nonlocal seconds, batches
        started = time.perf_counter()
        result = runner(batch)
        seconds += time.perf_counter() - started
        batches += 1
        return result

    with runner, av.open(str(clip)) as container:
        warm_up(runner, manifest)
        cut = (
            inference.tiled_array(manifest, framing.to_rgb(frame, info, n).pixels, overlap=manifest.overlap())
            for n, frame in enumerate(container.decode(video=0))
        )
        frames = sum(1 for _ in tiling.run_tiled_stream(cut, timed, batch=manifest.tiling.batch))
    return {"frames": frames, "batches": batches, "model_seconds": round(seconds, 3), "fps": round(frames / seconds, 3)}


def naive(export_dir: Path, backend: str, clip: Path, work: Path) -> dict:
    """Decode to PNGs, restore the folder as `run` does, encode the restored PNGs."""
    import av

    from deploytool.runtime import images, inference

    manifest, runner = open_runner(export_dir, backend)
    frames_dir, restored_dir = work / "frames", work / "restored"
    with runner:
        warm_up(runner, manifest)
        started = time.perf_counter()
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate
            for index, frame in enumerate(container.decode(stream)):
                images.write_samples(frames_dir / f"{index:06d}.png", frame.to_ndarray(format="rgb24"))
        paths = sorted(frames_dir.iterdir())
        for path in paths:
            inference.restore_file(runner, manifest, path, restored_dir / path.name, overlap=manifest.overlap())
        with av.open(str(work / "naive.mp4"), "w") as out:
            video = None
            for index, path in enumerate(sorted(restored_dir.iterdir())):
                samples = images.read_samples(path)
                if video is None:
                    video = out.add_stream("libx264", rate=Fraction(rate))
                    video.width, video.height, video.pix_fmt = samples.shape[1], samples.shape[0], "yuv420p"
                    video.options = {"preset": PRESET, "crf": "18"}
                frame = av.VideoFrame.from_ndarray(samples, format="rgb24")
                frame.pts = index
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
        seconds = time.perf_counter() - started
    return {"frames": len(paths), "seconds": round(seconds, 3), "fps": round(len(paths) / seconds, 3)}


def peak_rss(export_dir: Path, backend: str, clip: Path, out: Path) -> dict:
    """A fresh process restores `clip`; its peak resident memory."""
    command = [sys.executable, __file__, "--child", str(clip), "--export", str(export_dir), "--backend", backend, "--child-out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        raise SystemExit(f"the measuring process failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout)


def resident_mib() -> float:
    """This process's resident memory now (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    """Restore one clip; the process's peak RSS, and the peak sampled while the pipeline ran."""
    import threading

    from deploytool.runtime import video

    manifest, runner = open_runner(args.export, args.backend)
    samples, done = [resident_mib()], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(resident_mib())

    with runner:
        warm_up(runner, manifest)
        restorer = video.TiledRestorer(runner, manifest, overlap=manifest.overlap())
        before = resident_mib()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        summary = video.restore_video(args.child, args.child_out, restorer, video.EncodeOptions(preset=PRESET))
        done.set()
        sampler.join()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "frames": summary["frames"],
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "rss_before_pipeline_mib": round(before, 1),
                "pipeline_peak_rss_mib": round(max(samples), 1),
                "fps": summary["fps"],
            }
        )
    )


def markdown(report: dict) -> str:
    p, m, n = report["pipeline"], report["model_alone"], report.get("naive")
    rows = [
        "| measure | value |",
        "|---|---|",
        f"| clip | {report['size']}, {p['frames']} frames, {report['export']} ({report['backend']}) |",
        f"| pipeline frames/s | {p['fps']} |",
        f"| model alone frames/s (same tiles) | {m['fps']} |",
        f"| pipeline / model alone (frames/s) | {report['pipeline_vs_model_alone']} |",
        f"| model-busy share of the pipeline | {p['model_busy_share']} |",
    ]
    if n:
        rows += [f"| naive path frames/s | {n['fps']} |", f"| pipeline / naive (frames/s) | {report['pipeline_vs_naive']} |"]
    for item in report["rss"]:
        rows.append(
            f"| peak RSS at {item['frames']} frames | {item['peak_rss_mib']} MiB (before the pipeline {item['rss_before_pipeline_mib']}, while it ran {item['pipeline_peak_rss_mib']}) |"
        )
    rows.append(f"| peak RSS longest / shortest | {report['rss_ratio']} |")
    rows.append(f"| pipeline's own growth (peak while running - before), longest / shortest | {report['pipeline_growth_mib']} MiB |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="Export directory (default: esrt-x2 exported at its default tile).")
    parser.add_argument("--backend", default="ort", help="ort, ort-fp16, trt, torch")
    parser.add_argument("--size", default="1280x720", help="WxH of the generated clip")
    parser.add_argument("--frames", type=int, default=100, help="frames of the clip timed")
    parser.add_argument("--rss-frames", default="100,1000", help="clip lengths whose peak RSS is measured")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive PNG path")
    parser.add_argument("--repeats", type=int, default=2, help="pipeline and model-alone runs, alternated; the best of each counts")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    lengths = [int(v) for v in args.rss_frames.split(",")]
    with tempfile.TemporaryDirectory(prefix="video-bench-") as tmp:
        work = Path(tmp)
        export_dir = args.export or default_export(work)
        say(f"clip {width}x{height}, {args.frames} frames")
        clip = work / "clip.mp4"
        make_clip(clip, width, height, args.frames)
        pipelines, alones = [], []
        for repeat in range(args.repeats):
            # alternated, best of each: a shared machine's load changes during a run
            say(f"pipeline ({repeat + 1}/{args.repeats})")
            pipelines.append(run_pipeline(export_dir, args.backend, clip, work / "out.mp4"))
            say(f"  {pipelines[-1]['fps']} frames/s, model busy {pipelines[-1]['model_busy_share']}")
            say(f"model alone on the same tiles ({repeat + 1}/{args.repeats})")
            alones.append(model_alone(export_dir, args.backend, clip))
            say(f"  {alones[-1]['fps']} frames/s")
        pipeline = max(pipelines, key=lambda r: r["fps"])
        alone = max(alones, key=lambda r: r["fps"])
        report = {
            "export": str(export_dir),
            "backend": args.backend,
            "size": f"{width}x{height}",
            "pipeline": pipeline,
            "model_alone": alone,
            "pipeline_vs_model_alone": round(pipeline["fps"] / alone["fps"], 3),
        }
        if not args.no_naive:
            say("naive: PNG frames, run, encode")
            report["naive"] = naive(export_dir, args.backend, clip, work / "naive")
            report["pipeline_vs_naive"] = round(pipeline["fps"] / report["naive"]["fps"], 3)
        report["rss"] = []
        for length in lengths:
            say(f"peak RSS at {length} frames")
            longer = work / f"rss-{length}.mp4"
            make_clip(longer, width, height, length)
            report["rss"].append(peak_rss(export_dir, args.backend, longer, work / f"rss-{length}-out.mp4"))
            longer.unlink()
        report["rss_ratio"] = round(report["rss"][-1]["peak_rss_mib"] / report["rss"][0]["peak_rss_mib"], 3)
        report["pipeline_growth_mib"] = " / ".join(
            str(round(item["pipeline_peak_rss_mib"] - item["rss_before_pipeline_mib"], 1)) for item in (report["rss"][-1], report["rss"][0])
        )
    print(json.dumps(report, indent=2) if args.json else markdown(report))


if __name__ == "__main__":
    main()
