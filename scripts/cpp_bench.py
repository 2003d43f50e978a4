"""The C++ runtime against the Python tool, measured in one run: the tilers' own overhead on one
large image with the deterministic stand-in model (tests/standin.py and cpp/tests/standin.cpp,
the same arithmetic), peak resident memory of each (child processes, from os.wait4), and the
build time of cpp/ from scratch (Release); and end to end, one real export (the id's tiny
configuration, exported by the exporter) run by `deploytool-infer --backend openvino` and by
`deploytool run --backend openvino` on the same image: each a fresh process, as a user runs it.

    scripts/cpp_bench.py [--model-id ID] [--size 4096] [--e2e-size 512] [--jobs N]

Overhead is each tiler's restore time minus the time spent inside the stand-in model: cutting,
padding, batching, blending and cropping, the part a real backend does not change. The
end-to-end row is wall time from process start to the PNG written (Python's includes importing
deploytool and its libraries), after one untimed run of each that leaves OpenVINO's compiled blob
in the export's cache, so both import it instead of compiling.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.standin: the stand-in model and exports

import numpy as np  # noqa: E402

from deploytool.build import registry  # noqa: E402
from deploytool.errors import DeployError  # noqa: E402
from deploytool.runtime import inference, png  # noqa: E402
from deploytool.runtime.manifest import read_manifest  # noqa: E402
from tests.helpers import export_tiny  # noqa: E402
from tests.standin import TilingConfig, registry_tiling_configs, standin_runner, write_standin_export  # noqa: E402


def python_child(export_dir: Path, image: Path) -> None:
    """Runs in a child process: the Python tiler over `image`; prints its timings as JSON."""
    manifest = read_manifest(export_dir)
    model = standin_runner(manifest)
    model_seconds = {"wall": 0.0, "cpu": 0.0}

    def timed(batch: np.ndarray) -> np.ndarray:
        started, started_cpu = time.perf_counter(), time.process_time()
        result = model(batch)
        model_seconds["wall"] += time.perf_counter() - started
        model_seconds["cpu"] += time.process_time() - started_cpu
        return result

    pixels, loaded = inference.model_input(manifest, image)
    started, started_cpu = time.perf_counter(), time.process_time()
    restored = inference.restore_array(timed, manifest, pixels, overlap=manifest.tiling.overlap)
    restored = inference.images.restore_channels(restored, loaded)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    tiles = inference.tiles_for(manifest, *pixels.shape[:2], manifest.tiling.overlap)
    timings = {"restore_s": seconds, "model_s": model_seconds["wall"], "restore_cpu_s": cpu_seconds, "model_cpu_s": model_seconds["cpu"]}
    print(json.dumps({**timings, "tiles": tiles, "output": list(restored.shape[:2])}))


# Peak RSS is read with os.wait4 on a grandchild forked by this small launcher: a child spawned
# straight from this process would inherit this process's (large) resident set in its ru_maxrss.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}, out)
"""


def run_child(command: list[str]) -> tuple[dict, float]:
    """(the child's JSON, its peak RSS in MiB)."""
    with tempfile.TemporaryDirectory() as scratch:
        usage_file = Path(scratch) / "usage.json"
        done = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(usage_file), *command], capture_output=True, text=True)
        usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {"exit": done.returncode}
    if done.returncode or usage["exit"]:
        sys.exit(f"error: {' '.join(command[:3])} failed: {done.stderr.strip()}")
    return json.loads(done.stdout), usage["maxrss_kib"] / 1024  # Linux: KiB


def build(source: Path, build_dir: Path, jobs: int) -> float:
    """Configure and build cpp/ (Release) in `build_dir`; the seconds it took."""
    started = time.perf_counter()
    for command in (
        ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build_dir), "-j", str(jobs)],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"error: {' '.join(command)} failed: {(done.stdout + done.stderr)[-2000:]}")
    return time.perf_counter() - started


def timed_child(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process run to completion."""
    with tempfile.TemporaryDirectory() as scratch:
        usage_file = Path(scratch) / "usage.json"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-I", "-S", "-c", LAUNCHER, str(usage_file), *command], capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        usage = json.loads(usage_file.read_text()) if usage_file.is_file() else {"exit": done.returncode}
    if done.returncode or usage["exit"]:
        sys.exit(f"error: {' '.join(command[:3])} failed: {done.stderr.strip()[-2000:]}")
    return seconds, usage["maxrss_kib"] / 1024


def end_to_end(model_id: str, build_dir: Path, scratch: Path, size: int, channels: int) -> list[str]:
    """The end-to-end table's lines: one real (tiny) export on OpenVINO, C++ against Python."""
    if "DEPLOYTOOL_WITH_OPENVINO:INTERNAL=ON" not in (build_dir / "CMakeCache.txt").read_text():
        return ["end to end: skipped, the C++ build has no OpenVINO backend (pip install deploytool[openvino] for this Python)"]
    export_dir = scratch / "real-export"
    export_tiny(model_id, export_dir, fp16=False)
    image = scratch / "e2e.png"
    rng = np.random.default_rng(1)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    base = 0.5 + 0.4 * np.sin(7 * x[..., None] + 4 * y[..., None] + np.arange(channels))
    image.write_bytes(png.encode(np.rint(np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1) * 255).astype(np.uint8)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    outputs = {"C++": scratch / "e2e.cpp.png", "Python": scratch / "e2e.py.png"}
    commands = {
        "C++": [str(build_dir / "deploytool-infer"), str(export_dir), str(image), "-o", str(outputs["C++"]), "--backend", "openvino"],
        "Python": [sys.executable, "-m", "deploytool", "run", str(export_dir), str(image), "-o", str(outputs["Python"]), "--backend", "openvino"],
    }
    for command in commands.values():
        timed_child(command, env)  # compiles once; later runs import the cached blob
    measured = {name: timed_child(command, env) for name, command in commands.items()}
    same = outputs["C++"].read_bytes() == outputs["Python"].read_bytes()
    manifest = read_manifest(export_dir)
    tiles = inference.tiles_for(manifest, size, size, manifest.tiling.overlap)
    (python_s, python_rss), (cpp_s, cpp_rss) = measured["Python"], measured["C++"]
    return [
        f"end to end: {model_id} tiny real export, OpenVINO on the CPU, a {size}x{size} image, {tiles} tiles; PNG bytes identical: {'yes' if same else 'NO'}",
        "",
        "| | process wall s | peak RSS MiB |",
        "|---|---:|---:|",
        f"| Python `deploytool run --backend openvino` | {python_s:.2f} | {python_rss:.0f} |",
        f"| C++ `deploytool-infer --backend openvino` | {cpp_s:.2f} | {cpp_rss:.0f} |",
        "",
        f"end-to-end ratio Python / C++: {python_s / cpp_s:.1f}x wall time, {python_rss / cpp_rss:.1f}x peak RSS",
    ]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-id",
        action="append",
        help="a registry id whose tiling (tile, overlap, batch, scale, blend) to use, one row each (repeatable); "
        "default: the first single-image RGB restoration (scale 1) tiling",
    )
    parser.add_argument("--size", type=int, default=4096, help="image height and width")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each tiler per stand-in row, C++ and Python alternating")
    parser.add_argument("--e2e-size", type=int, default=512, help="image height and width of the end-to-end (real export) row")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    parser.add_argument("--build-dir", type=Path, help="build cpp/ here, incrementally, instead of from scratch in a temporary folder")
    parser.add_argument("--standin-only", action="store_true", help="only the stand-in rows: no build time, no end-to-end row")
    parser.add_argument("--python-child", nargs=2, metavar=("EXPORT_DIR", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.size < 1 or args.repeat < 1:
        parser.error("--size and --repeat must be at least 1")
    return args


def standin_config(model_id: str | None) -> TilingConfig:
    """The registry's tiling configuration of `model_id` (default: the first RGB restoration one)."""
    configs = registry_tiling_configs()
    if model_id is None:
        return next(c for c in configs if c.scale == 1 and c.views == ("image",) and c.channels == 3 and not c.blend_trim)
    try:
        entry = registry.get(model_id)
    except DeployError as error:
        sys.exit(f"error: {error}")
    config = next(
        c
        for c in configs
        if (c.scale, c.tile, c.tile_multiple, c.batch, c.overlap, c.blend_trim, c.views)
        == (entry.scale, entry.tiling.tile, entry.tiling.tile_multiple, entry.tiling.batch, entry.tiling.overlap, entry.tiling.blend.trim, entry.views)
        and c.channels == entry.channels
    )
    if len(config.views) != 1:
        sys.exit(f"error: {model_id} takes {len(config.views)} views; the benchmark runs single-image models")
    return config


def standin_row(config: TilingConfig, build_dir: Path, scratch: Path, size: int, repeat: int) -> dict:
    """Both tilers on one image with the stand-in model, alternately: medians and peak RSS."""
    export_dir = scratch / f"export-{config.label}"
    write_standin_export(config, export_dir)
    image = scratch / f"image-{config.channels}.png"
    if not image.is_file():
        y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
        rng = np.random.default_rng(0)
        base = 0.5 + 0.4 * np.sin(9 * x[..., None] + 5 * y[..., None] + np.arange(config.channels))
        image.write_bytes(png.encode(np.rint(np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1) * 255).astype(np.uint8)))
    commands = {
        "C++": [str(build_dir / "deploytool-standin"), "--bench", str(export_dir), str(image)],
        "Python": [sys.executable, str(Path(__file__).resolve()), "--python-child", str(export_dir), str(image)],
    }
    runs: dict[str, list[tuple[dict, float]]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            runs[name].append(run_child(command))
    row = {"config": config, "tiles": runs["C++"][0][0]["tiles"], "output": runs["C++"][0][0]["output"]}
    for name, measured in runs.items():
        assert all(m["tiles"] == row["tiles"] and m["output"] == row["output"] for m, _ in measured), (name, measured)
        row[name] = {
            "restore_s": statistics.median(m["restore_s"] for m, _ in measured),
            "model_s": statistics.median(m["model_s"] for m, _ in measured),
            "overhead_s": statistics.median(m["restore_s"] - m["model_s"] for m, _ in measured),
            "overhead_cpu_s": statistics.median(m["restore_cpu_s"] - m["model_cpu_s"] for m, _ in measured),
            "rss_mib": max(rss for _, rss in measured),
        }
    print(f"{config.model_id} tiling measured", file=sys.stderr)
    return row


def standin_table(rows: list[dict], size: int, repeat: int) -> list[str]:
    lines = [
        f"stand-in model on a {size}x{size} image: medians of {repeat} runs each, C++ and Python alternating; "
        f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}",
        "",
        "| tiling | tiles | output | tiler | restore s | in stand-in model s | tiler overhead s | tiler overhead CPU s | peak RSS MiB |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for name in ("Python", "C++"):
            m = row[name]
            lines.append(
                f"| {row['config'].model_id} ({row['config'].label}) | {row['tiles']} | {row['output'][0]}x{row['output'][1]} | {name} "
                f"| {m['restore_s']:.3f} | {m['model_s']:.3f} | {m['overhead_s']:.3f} | {m['overhead_cpu_s']:.3f} | {m['rss_mib']:.0f} |"
            )
    lines.append("")
    for row in rows:
        python, cpp = row["Python"], row["C++"]
        lines.append(
            f"{row['config'].model_id} (x{row['config'].scale}): tiler overhead ratio Python / C++ {python['overhead_s'] / cpp['overhead_s']:.1f}x "
            f"(CPU time {python['overhead_cpu_s'] / cpp['overhead_cpu_s']:.1f}x); "
            f"peak RSS ratio Python / C++ {python['rss_mib'] / cpp['rss_mib']:.1f}x"
        )
    return lines


def main() -> None:
    args = parse_args()
    if args.python_child:
        python_child(Path(args.python_child[0]), Path(args.python_child[1]))
        return
    configs = [standin_config(model_id) for model_id in args.model_id or [None]]
    with tempfile.TemporaryDirectory(prefix="cpp_bench_") as scratch:
        scratch = Path(scratch)
        build_dir = args.build_dir.resolve() if args.build_dir else scratch / "build"
        build_seconds = build(REPO / "cpp", build_dir, args.jobs)
        rows = [standin_row(config, build_dir, scratch, args.size, args.repeat) for config in configs]
        real = [] if args.standin_only else end_to_end(configs[0].model_id, build_dir, scratch, args.e2e_size, configs[0].channels)
    print("\n".join(standin_table(rows, args.size, args.repeat)))
    if not (args.build_dir or args.standin_only):
        print(f"cpp/ built from scratch (Release, -j{args.jobs}, library, deploytool-infer, tests): {build_seconds:.0f} s")
    if real:
        print()
        print("\n".join(real))


if __name__ == "__main__":
    main()
