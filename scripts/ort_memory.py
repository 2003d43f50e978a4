"""What ONNX Runtime's memory pattern costs a `run` on CPU: each export's `model.onnx` opened as
deploytool opens it (`OrtRunner`: the arena, no memory pattern) and at ONNX Runtime's defaults
(the arena and the memory pattern), both with deploytool's threads, on one synthetic batch of the
export's static shape.

    python scripts/ort_memory.py EXPORT_DIR [EXPORT_DIR ...] [--runs 3] [--rounds 2] [--json]

Each session runs in a process of its own, one at a time (two of Restormer's at 512 px, both
open, took 14 GB): opened, run once to warm up (the pattern's block is allocated from the second
run on), then `--runs` timed runs. Each process reports its median run and its peak resident
memory (VmHWM). The two settings' processes alternate for `--rounds` rounds (deploytool's first
in the first round, ONNX Runtime's in the next), so that a change in the machine's load falls on
both; a setting's time is the median of its processes' medians, its memory their largest peak.
Ratios are deploytool's over ONNX Runtime's defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from deploytool.errors import DeployError
from deploytool.runtime.backends.onnxruntime import CPU_ONLY, OrtRunner, default_threads
from deploytool.runtime.input_batches import synthetic_batch
from deploytool.runtime.manifest import FP32_FILE, read_manifest
from deploytool.verify.benchmark import alternating_medians

SETTINGS = ("deploytool", "onnxruntime-defaults")


def open_setting(graph: Path, setting: str):
    """A callable running `graph` on one batch, opened as `setting` says (see SETTINGS): only that
    session is open, so the process's peak is that session's."""
    if setting == "deploytool":
        runner = OrtRunner(graph, providers=CPU_ONLY)
        batch = synthetic_batch(runner.input_shape, seed=0)
        return lambda: runner(batch)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = default_threads()
    session = ort.InferenceSession(str(graph), options, providers=CPU_ONLY)
    graph_input = session.get_inputs()[0]
    batch = synthetic_batch(tuple(graph_input.shape), seed=0)
    return lambda: session.run(None, {graph_input.name: batch})


def measured_process(graph: Path, setting: str, runs: int) -> dict:
    """{"seconds": median run, "peak_bytes": VmHWM} of a process that opens `graph` as `setting`
    says, runs it once to warm up and `runs` times timed. Its own high-water mark, which its exec
    starts afresh: wait4's would start from the forking process's size."""
    child = subprocess.run([sys.executable, __file__, "--child", setting, "--runs", str(runs), str(graph)], capture_output=True, text=True)
    if child.returncode != 0:
        raise DeployError(f"the {setting} run of {graph} failed: {child.stderr.strip().splitlines()[-1] if child.stderr.strip() else child.returncode}")
    return json.loads(child.stdout)


def own_peak_bytes() -> int:
    """This process's peak resident memory (/proc/self/status VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise DeployError("/proc/self/status has no VmHWM: the peak memory needs Linux")


def child_measurement(graph: Path, setting: str, runs: int) -> dict:
    """What `measured_process` reports, measured in this process."""
    call = open_setting(graph, setting)
    call()
    (seconds,) = alternating_medians({setting: call}, runs).values()
    return {"seconds": seconds, "peak_bytes": own_peak_bytes()}


def measure(export_dir: Path, runs: int, rounds: int) -> dict:
    manifest = read_manifest(export_dir)
    graph = manifest.check_file(export_dir, FP32_FILE)
    print(f"{export_dir}: {rounds} round(s) of a process per setting, {runs} timed runs each", file=sys.stderr)
    measured: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for index in range(rounds):
        for setting in SETTINGS if index % 2 == 0 else SETTINGS[::-1]:
            measured[setting].append(measured_process(graph, setting, runs))
    seconds = {setting: statistics.median(m["seconds"] for m in values) for setting, values in measured.items()}
    peaks = {setting: max(m["peak_bytes"] for m in values) / 2**30 for setting, values in measured.items()}
    return {
        "export": str(export_dir),
        "model_id": manifest.model_id,
        "input": "x".join(map(str, manifest.input.shape)),
        "seconds": {setting: round(value, 4) for setting, value in seconds.items()},
        "peak_gb": {setting: round(value, 4) for setting, value in peaks.items()},
        "time_ratio": round(seconds["deploytool"] / seconds["onnxruntime-defaults"], 3),
        "memory_ratio": round(peaks["deploytool"] / peaks["onnxruntime-defaults"], 3),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| export | input | ORT defaults s | deploytool s | time ratio | ORT defaults peak | deploytool peak | memory ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, m = r["seconds"], r["peak_gb"]
        lines.append(
            f"| {r['model_id']} | {r['input']} | {s['onnxruntime-defaults']:.3f} | {s['deploytool']:.3f} | {r['time_ratio']:.3f} "
            f"| {m['onnxruntime-defaults']:.2f} GB | {m['deploytool']:.2f} GB | {r['memory_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", type=Path, help="export folders (deploytool export)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per process, after one warm-up (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting, alternating (default 2)")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)  # one measured process
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.runs < 1 or args.rounds < 1:
            raise DeployError("--runs and --rounds must be at least 1")
        if args.child:
            print(json.dumps(child_measurement(args.exports[0], args.child, args.runs)))
            return 0
        rows = [measure(export_dir, args.runs, args.rounds) for export_dir in args.exports]
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
