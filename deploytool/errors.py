"""Errors a user can act on.

Library code raises `DeployError` (or a subclass) with a message that reads as one complete
line; the CLI prints it as `error: <message>` and exits non-zero, never with a traceback.
"""


class DeployError(Exception):
    """A failure caused by the user's input or environment, explained in one line."""


class CheckpointError(DeployError):
    """A checkpoint that is missing, unreadable, unsafe, or does not match the model."""


class ImageError(DeployError):
    """An image that cannot be read, written, or fed to the model."""


class ExportError(DeployError):
    """An export that cannot proceed or produced a graph that breaks the export contract."""


class ParityError(DeployError):
    """A parity check that failed its tolerance."""


class BackendUnavailable(DeployError):
    """A runtime (ONNX Runtime provider, TensorRT, CUDA) that is not usable on this machine."""


class VideoError(DeployError):
    """A video that cannot be read, restored or written as asked."""
