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
    """`--device`: where the backends that take one run (OpenVINO's devices)."""
    from deploytool.runtime import backends

    described = [f"{name} backend: {backends.get(name).device_help}" for name in backends.device_backends()]
    return click.option("--device", help="; ".join(described))


def video_encode_options(command):
    """The video encoder's options (`--codec`, `--crf`, `--pix-fmt`, `--preset`, `--lossless`,
    `--no-audio`), handed to the command as one `encode` (runtime.video.EncodeOptions)."""

    @functools.wraps(command)
    def with_encode(*args, codec, crf, pix_fmt, preset, lossless, no_audio, **kwargs):
        from deploytool.runtime.video import EncodeOptions

        encode = EncodeOptions(codec=codec, crf=crf, pix_fmt=pix_fmt, preset=preset, lossless=lossless, audio=not no_audio)
        return command(*args, encode=encode, **kwargs)

    options = (
        click.option("--codec", help="Video encoder  [default: libx264, libx265 for sources deeper than 8 bits]"),
        click.option("--crf", type=int, help="Video quality (x264/x265/SVT-AV1/VP9)  [default: 18]"),
        click.option("--pix-fmt", help="Video pixel format  [default: yuv420p, yuv420p10le for deeper sources]"),
        click.option("--preset", help="Video encoder preset (x264/x265/SVT-AV1)."),
        click.option("--lossless", is_flag=True, help="Videos: FFV1 in Matroska storing RGB, each frame what `run` writes for it as an image."),
        click.option("--no-audio", is_flag=True, help="Videos: leave the audio streams out."),
    )
    for option in reversed(options):
        with_encode = option(with_encode)
    return with_encode


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
