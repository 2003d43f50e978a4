"""The `deploytool` command group: DeployError (and running out of memory) becomes one line on
stderr and exit status 2."""

from __future__ import annotations

import click

from deploytool.cli.options import fail
from deploytool.errors import DeployError


class Group(click.Group):
    """Turns DeployError into one line on stderr and exit status 2, never a traceback; so too an
    allocation that fails (an image too large for this machine's memory: outputs are written
    atomically, so nothing is left half-written)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeployError as exc:
            fail(str(exc))
        except MemoryError as exc:
            fail(f"out of memory: {str(exc).strip() or 'an allocation failed'}")
        except KeyboardInterrupt:
            fail("interrupted")


@click.group(cls=Group)
@click.version_option(package_name="deploytool")
def cli() -> None:
    """Export image-restoration Transformers to ONNX/TensorRT FP16 and prove parity."""
