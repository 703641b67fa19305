"""Inference with exported models through ONNX Runtime: the reference for the C++ application, a library and a
command-line tool (docs/runtime.md). Imports the contracts and the data layer's face alignment, never training code.

    from runtime import Model, ClipBuffer, StreamingSpotter, openface_columns
"""
from __future__ import annotations

import importlib

# Names load on first use, so `python -m runtime.check` does not find its module imported by the package first.
_EXPORTS = {"Model": "runtime.model", "ClipBuffer": "runtime.stream", "StreamingSpotter": "runtime.stream",
            "SpotThenRecognise": "runtime.stream", "openface_columns": "runtime.decode",
            "check_file": "runtime.check", "ContractBroken": "runtime.check", "UnreadableModel": "runtime.check"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
