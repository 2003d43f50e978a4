"""The tensor names and config parameters the repository writer, the model code and the client share."""

from __future__ import annotations

import numpy as np

VERSION = "1"  # every model has one version folder
WHOLE_IMAGE_MODEL_FILE = "model.py"
TILE_SUFFIX = "-tiles"

# One input per view and sample type, all optional: a request sets exactly one type for every view.
SAMPLE_TYPES = {"uint8": np.dtype(np.uint8), "uint16": np.dtype(np.uint16), "fp32": np.dtype(np.float32)}
TRITON_TYPES = {"uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "fp32": "TYPE_FP32"}
WIRE_TYPES = {"uint8": "UINT8", "uint16": "UINT16", "fp32": "FP32"}  # the HTTP/gRPC protocol's names
OUTPUT_PREFIX = "restored"

# config.pbtxt parameters of the whole-image model
PARAM_TILE_MODEL, PARAM_MAX_PIXELS, PARAM_VIEWS, PARAM_OVERLAP = "tile_model", "max_pixels", "views", "overlap"
# config.pbtxt parameter of a python-ort tile model; 0: the server's cores shared among its instances
PARAM_THREADS = "intra_op_threads"
# config.pbtxt parameter of a tile model that runs one of deploytool's backends: its registry name
PARAM_BACKEND = "backend"


def tile_model_name(model_id: str) -> str:
    return model_id + TILE_SUFFIX


def input_name(view: str, sample_type: str) -> str:
    return f"{view}_{sample_type}"


def output_name(sample_type: str) -> str:
    return f"{OUTPUT_PREFIX}_{sample_type}"


def sample_type_of(dtype: np.dtype) -> str | None:
    """'uint8' | 'uint16' | 'fp32' for an array's dtype, None for any other."""
    return next((name for name, known in SAMPLE_TYPES.items() if known == dtype), None)
