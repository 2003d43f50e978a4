"""The `deploytool` command group: DeployError, a usage error (and running out of memory) becomes
one line on stderr and exit status 2."""

from __future__ import annotations

import click

from deploytool.cli.options import fail
from deploytool.errors import DeployError


class Group(click.Group):
    """Turns DeployError into one line on stderr and exit status 2, never a traceback; so too an
    allocation that fails (an image too large for this machine's memory: outputs are written
    atomically, so nothing is left half-written), and a command line click cannot parse (an unknown
    option, a missing argument, a bad value), where click would print the usage, a hint and the
    error on three lines: here the error and the hint are one."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            fail(str(exc))
        except click.UsageError as exc:
            fail(usage_error_line(exc))
        except MemoryError as exc:
            fail(f"out of memory: {str(exc).strip() or 'an allocation failed'}")
        except KeyboardInterrupt:
            fail("interrupted")

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        """The group's own options parsed (`deploytool --bogus`), a usage error in one line; a bare
        `deploytool` still prints the help (click's NoArgsIsHelpError is a usage error since 8.2)."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                raise
            fail(usage_error_line(exc))


def usage_error_line(exc: click.UsageError) -> str:
    """click's message for a command line it cannot parse, with where the help is."""
    where = exc.ctx.command_path if exc.ctx is not None else "deploytool"
    return f"{exc.format_message()} (see '{where} --help')"


@click.group(cls=Group)
@click.version_option(package_name="deploytool")
def cli() -> None:
    """Export image-restoration Transformers to ONNX/TensorRT FP16 and prove parity."""
