"""The export the video tests restore with, made once for all of them."""

from __future__ import annotations

import pytest

from tests.helpers import export_tiny


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """A tiny SwinIR x2 whose batch of 4 takes tiles of two frames at once (6 tiles a 64x48 frame)."""
    out = tmp_path_factory.mktemp("video-export") / "swinir"
    export_tiny("swinir-s-x2", out, fp16=False, tile=(32, 32), batch=4)
    return out
