"""`deploytool` command line: each command parses its options and calls the library.

The commands live by what they act on (models, export, verify, run, serve); importing them
registers them on the group.
"""

from __future__ import annotations

from deploytool.cli import export, models, run, serve, verify  # noqa: F401  (registers the commands)
from deploytool.cli.group import cli


def main() -> None:
    cli(prog_name="deploytool")


if __name__ == "__main__":
    main()
