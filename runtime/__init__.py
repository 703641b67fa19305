"""Inference with exported models through ONNX Runtime: the reference for the C++ application, a library and a
command-line tool (docs/runtime.md). Imports the contracts and the data layer's face alignment, never training code."""
from runtime.check import ContractBroken, UnreadableModel, check_file
from runtime.decode import openface_columns
from runtime.model import Model
from runtime.stream import ClipBuffer, SpotThenRecognise, StreamingSpotter

__all__ = ["ClipBuffer", "ContractBroken", "Model", "SpotThenRecognise", "StreamingSpotter", "UnreadableModel",
           "check_file", "openface_columns"]
