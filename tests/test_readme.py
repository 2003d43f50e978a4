"""The README's examples, executed: its Python blocks and its `deploytool` command lines.

Every export a line names (`build/<id>`) is a tiny SwinIR export of the same scale (toy size,
seeded weights; the cheapest family to export and verify), made once; the files lines read
(photo.png, clip.mp4, photos/, ...) are small seeded images and videos. Optional arguments in brackets are left out.
A line that cannot run offline on a CPU is skipped with its reason (`SKIPPED`), so the list of
what is not executed is in one place and visible in pytest's `-rs` summary.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import cli_runner, export_tiny, tiny_entry, write_test_png
from tests.videos import Clip, make_clip

README = Path(__file__).resolve().parents[1] / "README.md"
OPTIONAL = re.compile(r"\s*\[[^\]]*\]")
EXPORT = re.compile(r"\bbuild/([a-z0-9][a-z0-9._-]*)")
IMAGE_FILES = ("photo.png", "in.png", "left.png", "right.png")
VIDEO_FILES = ("clip.mp4", "film.mkv", "in.mov", "long.mkv")
FOLDERS = ("photos", "videos")
# the tiny export standing in for every export of a scale
STAND_INS = {2: "swinir-s-x2", 4: "swinir-m-x4"}

# what the lines of a block of commands start with (other blocks are trees and listings)
COMMANDS = ("deploytool ", "bash ", "cmake ")
# (what a line contains, why it is not run here); the first that matches a line skips it
SKIPPED = [
    ("--backend trt", "needs an NVIDIA GPU with TensorRT (tests/deploytool/runtime/backends/tensorrt fake it)"),
    # before openvino-bf16: their lines list it among the --runtime choices
    ("deploytool triton build/hat-x4 --repo", "the default --runtime trt needs an engine built on an NVIDIA GPU (tests/deploytool/serving/test_repository.py)"),
    ("deploytool triton build/hat-x4 build/", "a repository of two exports (tests/deploytool/serving/test_repository.py writes them)"),
    (
        "openvino-bf16",
        "needs an export with its BF16 plan on a CPU with BF16 (tests/deploytool/runtime/backends/test_openvino_bf16.py runs run, verify, compare and eval with it)",
    ),
    ("deploytool build ", "builds a TensorRT engine: needs an NVIDIA GPU"),
    ("deploytool export hat-x4", "downloads the official checkpoint"),
    ("--weights ", "needs the official checkpoint file"),
    ("--random-init", "a full-size export, minutes of CPU (scripts/demo.sh runs it; tests/deploytool/build export tiny ones)"),
    ("deploytool serve ", "starts a Triton server (tests/deploytool/serving/test_server.py runs one)"),
    ("deploytool client ", "needs a running Triton server (tests/deploytool/serving/test_client.py)"),
    ("--dataset Set5", "needs the Set5 test set (tests/deploytool/verify/test_evaluation.py runs eval on a made one)"),
    ("# judge saved runs", "the overview's synopsis of compare; the Parity section's block runs verify --save-outputs and compare in order"),
]
NOT_DEPLOYTOOL = "not a deploytool command: the shell set-up, Triton's own server or the C++ build (tests/cpp builds and runs that)"


@dataclass(frozen=True)
class Example:
    line: int  # in README.md
    block: int  # the line its fenced block starts on
    language: str
    text: str

    @property
    def id(self) -> str:
        return f"L{self.line}: {self.text.splitlines()[0][:60]}"


def fenced_blocks(lines: list[str]) -> list[tuple[int, str, list[str]]]:
    """(line of the opening fence, language, body lines) of every fenced block."""
    blocks, opened, body = [], None, []
    for number, line in enumerate(lines, 1):
        if line.startswith("```") and opened is None:
            opened, body = (number, line[3:].strip()), []
        elif line.startswith("```"):
            blocks.append((*opened, body))
            opened = None
        elif opened is not None:
            body.append(line)
    return blocks


def examples() -> list[Example]:
    """The Python blocks whole, and every line of the other blocks on its own."""
    found = []
    for start, language, body in fenced_blocks(README.read_text().splitlines()):
        if language == "python":
            found.append(Example(start + 1, start, language, "\n".join(body)))
        elif language == "" and any(line.startswith(COMMANDS) for line in body):
            found += [Example(start + 1 + i, start, "shell", line.strip()) for i, line in enumerate(body) if line.strip()]
    return found


def command(text: str) -> str:
    """The line without its comment and optional arguments."""
    return OPTIONAL.sub("", re.sub(r"\s#\s.*$", "", text)).strip()


def skip_reason(example: Example) -> str | None:
    if example.language == "python":
        return None
    line = command(example.text)
    if not line.startswith("deploytool "):
        return NOT_DEPLOYTOOL
    reason = next((why for fragment, why in SKIPPED if fragment in example.text), None)
    if reason is None and "openvino" in line and importlib.util.find_spec("openvino") is None:
        reason = "OpenVINO is not installed (pip install deploytool[openvino])"
    return reason


class Workspace:
    """A folder with the README's inputs and a `build/` of tiny exports made on demand."""

    def __init__(self, root: Path):
        self.root, self.exports, self.ran = root, root / "exports", set()
        self.exports.mkdir()
        (root / "stand-ins").mkdir()

    def export(self, model_id: str) -> None:
        """`build/<model_id>`: the stand-in of its scale."""
        stand_in = self.root / "stand-ins" / STAND_INS[tiny_entry(model_id).scale]
        if not stand_in.is_dir():
            export_tiny(stand_in.name, stand_in)
        if not (self.exports / model_id).exists():
            (self.exports / model_id).symlink_to(stand_in)

    def folder_for(self, example: Example) -> Path:
        """The block's own working folder (its lines build on each other), with the inputs."""
        folder = self.root / f"block{example.block}"
        if not folder.is_dir():
            folder.mkdir()
            (folder / "build").symlink_to(self.exports)
            for name in IMAGE_FILES:
                write_test_png(folder / name, 3)
            for name in VIDEO_FILES:
                make_clip(folder / name, Clip(pts=list(range(3))))
            for name in FOLDERS:
                (folder / name).mkdir()
            write_test_png(folder / "photos" / "a.png", 3)
            make_clip(folder / "videos" / "b.mp4", Clip(pts=list(range(3))))
        return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme"))


def execute(example: Example, workspace: Workspace, monkeypatch) -> None:
    for model_id in EXPORT.findall(example.text):
        workspace.export(model_id)
    monkeypatch.chdir(workspace.folder_for(example))
    if example.language == "python":
        exec(compile(example.text, f"README.md:{example.line}", "exec"), {"__name__": "readme"})
    else:
        from deploytool.cli import cli

        result = cli_runner().invoke(cli, shlex.split(command(example.text))[1:])
        assert result.exit_code == 0, f"README.md:{example.line}: {example.text}\n{result.output}{result.stderr}"
    workspace.ran.add(example)


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.id)
def test_readme_example_runs(example, workspace, monkeypatch):
    reason = skip_reason(example)
    if reason:
        pytest.skip(reason)
    # a line may read what an earlier line of its block wrote (compare reads verify's saved runs)
    earlier = [e for e in examples() if e.block == example.block and e.line < example.line and e not in workspace.ran and not skip_reason(e)]
    for before in [*earlier, example]:
        execute(before, workspace, monkeypatch)


def test_the_readme_has_a_python_example_and_runs_most_command_lines():
    found = examples()
    assert any(e.language == "python" for e in found)
    commands = [e for e in found if e.language == "shell" and command(e.text).startswith("deploytool ")]
    assert sum(skip_reason(e) is None for e in commands) >= len(commands) // 2, [e.text for e in commands if skip_reason(e)]
