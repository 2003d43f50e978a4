"""On PYTHONPATH, this makes importing the export extra's heavy modules fail as if they were not
installed (ModuleNotFoundError naming the module): the runtime-only tests run under it."""

import sys
from importlib.abc import MetaPathFinder

BLOCKED = {"torch", "onnx", "onnxsim", "spandrel"}


class BlockExportExtra(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by tests/import_blocker)", name=name)
        return None


sys.meta_path.insert(0, BlockExportExtra())
