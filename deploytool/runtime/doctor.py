"""`deploytool doctor`: what this machine has, and what each command can do with it.

`probe()` gathers the facts (lazy imports, nothing fails when a package is missing);
`capabilities(facts)` is a pure function of them, so every combination is testable anywhere.
"""

from __future__ import annotations

import importlib
import platform
import sys
from typing import Any

from deploytool.runtime import backends
from deploytool.runtime.backends.tensorrt import build_status


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # a broken install reports as absent; doctor must always answer
        return None


# what `export` needs; the backends' packages follow in registry order, then spandrel (the originals)
EXPORT_PACKAGES = ("torch", "onnx", "onnxsim", "onnxruntime")


def packages() -> tuple[str, ...]:
    """The packages doctor reports the versions of."""
    found = list(EXPORT_PACKAGES)
    for name in backends.names():
        found += [module for module in backends.get(name).requires if module not in found]
    return (*found, "spandrel")


def probe() -> dict[str, Any]:
    facts: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    facts |= {name: _version(name) for name in packages()}
    facts |= {"cuda": None, "gpus": []}
    if facts["torch"]:
        import torch

        facts["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                facts["gpus"].append({"name": props.name, "compute_capability": [props.major, props.minor], "memory_gb": round(props.total_memory / 2**30, 1)})
    for name in backends.names():
        facts |= backends.get(name).probe(facts)
    return facts


def capabilities(facts: dict[str, Any]) -> dict[str, str]:
    """One line per command: what it can do on a machine with these facts."""
    missing = [name for name in ("torch", "onnx", "onnxsim", "onnxruntime") if not facts.get(name)]
    runnable = [name for name in backends.available(facts) if name in backends.runtime_names()]
    notes = [note for note in (backends.get(name).doctor_note(facts) for name in backends.runtime_names()) if note]
    return {
        "export": f"no: missing {', '.join(missing)}" if missing else "yes (CPU is enough)",
        "verify": f"yes: {', '.join(runnable)} against the original" + ("" if facts.get("spandrel") else " (no spandrel: pip install spandrel)"),
        "run": f"yes: backends {'; '.join([', '.join(runnable), *notes])}",
        "build": build_status(facts),
        "bench": f"yes: {', '.join(runnable)}" + ("" if facts.get("gpus") else " (no GPU: CPU timings only)"),
    }


def report_lines(facts: dict[str, Any], caps: dict[str, str]) -> list[str]:
    lines = [f"python {facts['python']} on {facts['platform']}"]
    for name in packages():
        lines.append(f"{name:<12} {facts.get(name) or 'not installed'}")
    lines.append(f"{'CUDA':<12} {facts['cuda'] or 'none'} (torch build)")
    if facts["gpus"]:
        for gpu in facts["gpus"]:
            cc = gpu["compute_capability"]
            lines.append(f"{'GPU':<12} {gpu['name']}, compute capability {cc[0]}.{cc[1]}, {gpu['memory_gb']} GB")
    else:
        lines.append(f"{'GPU':<12} none visible to torch")
    for name in backends.names():
        lines += backends.get(name).report(facts)
    lines.append("")
    lines += [f"{command:<7} {what}" for command, what in caps.items()]
    return lines
