"""What the commands share: one-line errors and messages, tile parsing, and the options several commands take."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from deploytool.errors import DeployError

# {extra: the top-level modules it installs}; `pip install deploytool` has none of them
EXTRA_MODULES = {"export": {"torch", "onnx", "onnxsim", "onnxconverter_common", "safetensors", "PIL", "spandrel"}}


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def say(message: str) -> None:
    click.echo(message, err=True)


def parse_tile(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    parts = value.lower().split("x")
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{value!r}: use N or HxW, e.g. 128 or 96x160") from None
    if len(numbers) == 1:
        return (numbers[0], numbers[0])
    if len(numbers) == 2:
        return numbers  # type: ignore[return-value]
    raise click.BadParameter(f"{value!r}: use N or HxW, e.g. 128 or 96x160")


def json_option(help: str | None = "Machine-readable output."):
    """`--json` (the `as_json` flag): print the command's result as JSON on stdout."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def weights_option(help: str):
    """`--weights`: a checkpoint file."""
    return click.option("--weights", type=click.Path(path_type=Path), help=help)


def device_option():
    """`--device`: the OpenVINO device of the openvino backend."""
    return click.option("--device", help="openvino backend: the OpenVINO device, e.g. GPU or NPU  [default: CPU]")


def needs_extra(extra: str):
    """The command needs `extra`: a module of it that is not installed is one line naming the extra.

    Any other missing module is a bug and keeps its traceback.
    """

    def decorate(command):
        @functools.wraps(command)
        def run(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in EXTRA_MODULES[extra]:
                    raise
                name = click.get_current_context().info_name
                raise DeployError(f"deploytool {name} needs the {extra} extra: pip install 'deploytool[{extra}]'") from None

        return run

    return decorate
